"""Entry point: ``python -m bytewax.run flows.main`` (configured by ``PM_*`` environment
variables and the YAML file named by ``PM_CONFIG``; see ``connectors.settings``)."""

from flows.pipeline import main_flow

flow = main_flow()
