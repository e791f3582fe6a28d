-- Whether a held order belongs to the verification: lets its state changes skip the order
-- update when there is none (one round trip less per approval).
ALTER TABLE verification ADD COLUMN has_order INTEGER NOT NULL DEFAULT 0;
