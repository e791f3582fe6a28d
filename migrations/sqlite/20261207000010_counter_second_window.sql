-- A second window on the same counter row (a key with two limits, such as a number's
-- "5/10m" and "10/1d"): one row written per start instead of two.
ALTER TABLE fraud_counter ADD COLUMN window2_start INTEGER NOT NULL DEFAULT 0;
ALTER TABLE fraud_counter ADD COLUMN window2_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE fraud_counter ADD COLUMN hits2 INTEGER NOT NULL DEFAULT 0;
