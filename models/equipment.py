"""The equipment types the system knows out of the box: sensors, settings, RUL unit.

Another type needs only an entry here (or in configuration) and a model trained on it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EquipmentType:
    """What a kind of equipment reports and how its life is counted.

    >>> EQUIPMENT_TYPES["pump"].hours_per_reading
    0.16666666666666666
    """

    name: str
    sensors: tuple[str, ...]
    settings: tuple[str, ...]
    rul_unit: str  # "cycles" or "hours"
    hours_per_reading: float
    vibration_sensors: tuple[str, ...] = ()


CMAPSS_SENSORS = (
    "T2", "T24", "T30", "T50", "P2", "P15", "P30", "Nf", "Nc", "epr", "Ps30",
    "phi", "NRf", "NRc", "BPR", "farB", "htBleed", "Nf_dmd", "PCNfR_dmd", "W31", "W32",
)  # fmt: skip
CMAPSS_SETTINGS = ("op_setting_1", "op_setting_2", "op_setting_3")

EQUIPMENT_TYPES: dict[str, EquipmentType] = {
    "turbofan_engine": EquipmentType(
        name="turbofan_engine",
        sensors=CMAPSS_SENSORS,
        settings=CMAPSS_SETTINGS,
        rul_unit="cycles",
        hours_per_reading=1.0,
    ),
    "pump": EquipmentType(
        name="pump",
        sensors=(
            "flow_m3h",
            "suction_pressure_bar",
            "discharge_pressure_bar",
            "motor_current_a",
            "bearing_temp_c",
            "vibration",
        ),
        settings=("speed_rpm",),
        rul_unit="hours",
        hours_per_reading=600.0 / 3600.0,
        vibration_sensors=("vibration",),
    ),
}
