-- Known-good numbers and customers are found among the approved verifications themselves:
-- an approval already rewrites every index entry of its row (its `finished_at` is indexed),
-- so these partial indexes cost it one entry each, where the `known_good` table cost a row,
-- an upsert and a statement. Erasure blanks the pseudonyms, which forgets the mark with them.
CREATE INDEX IF NOT EXISTS verification_known_good_phone ON verification (brand_id, phone_pseudonym, finished_at)
    WHERE status = 'approved';
CREATE INDEX IF NOT EXISTS verification_known_good_customer ON verification (brand_id, customer_pseudonym, finished_at)
    WHERE status = 'approved' AND customer_pseudonym <> '';
DROP TABLE known_good;
