-- 006_alert_deliveries: the alert delivery ledger, one row per (alert id, target).
-- target is a fingerprint of the Apprise URL (16 hex digits of its SHA-256; the URL itself
-- is a secret and never stored), target_label the URL with secrets masked. A row is
-- claimed ('sending', with due_at = end of the lease) before the send and confirmed
-- ('delivered') after Apprise accepted it; a failure records last_error and makes the row
-- due again after a back-off; a lease that runs out (the sender died) makes it due again.
-- payload is the rendered message, so a retry after a restart needs nothing from the flow.
-- Few rows: a plain table on both storage paths. Idempotent.

CREATE TABLE IF NOT EXISTS alert_deliveries (
    alert_id     text        NOT NULL,
    target       text        NOT NULL,
    target_label text        NOT NULL,
    state        text        NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'sending', 'failed', 'delivered', 'abandoned')),
    attempts     integer     NOT NULL DEFAULT 0,
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    due_at       timestamptz DEFAULT now(),
    claimed_at   timestamptz,
    claimed_by   text,
    delivered_at timestamptz,
    last_error   text,
    PRIMARY KEY (alert_id, target)
);
CREATE INDEX IF NOT EXISTS alert_deliveries_due ON alert_deliveries (due_at)
    WHERE state IN ('pending', 'sending', 'failed');
