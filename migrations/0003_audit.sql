-- The mirror auditor loop (issue 4): each answer and auditor reply is kept with
-- its attempt, and the task records its audit decision and verdict trail.
ALTER TABLE attempts ADD COLUMN output TEXT;
ALTER TABLE tasks ADD COLUMN audit TEXT;   -- JSON
