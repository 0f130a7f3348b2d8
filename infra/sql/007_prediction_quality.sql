-- 007_prediction_quality: how many of the model's sensors a reading lacked (their last
-- value was carried forward). A prediction with imputed_sensors > 0 is not a clean "ok".
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS imputed_sensors smallint DEFAULT 0;
