-- No query looks tasks up by owner (recovery selects by state and checks the
-- owner of each row), and every insert and ownership change paid for this
-- index with a page written to the WAL.
DROP INDEX IF EXISTS tasks_owner;
