-- A reservation line's product is checked when its transaction commits,
-- not after each statement. The group commit runs each caller's turn in a
-- savepoint of one transaction; a check after the statement locked the
-- product row (FOR KEY SHARE) in that turn's subtransaction, and the next
-- turn's hold, updating the same row from another subtransaction, then
-- had to record both in a new MultiXact: one per order for a product in
-- demand, each a write to PostgreSQL's multixact logs, and a debt that
-- anti-wraparound vacuums pay later. Checked at commit, the lock is the
-- transaction's own and nothing is recorded.
--
-- The check cannot fail there: a line is inserted only from the product
-- row its statement has just updated (and so locked until the commit).
ALTER TABLE reservation_lines
    ALTER CONSTRAINT reservation_lines_sku_fkey DEFERRABLE INITIALLY DEFERRED;
