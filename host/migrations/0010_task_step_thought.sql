-- The model's text that came with a plugin planner's tool call (none for a script's steps):
-- the assistant message's content in the `messages` export, and history the planner is given.
ALTER TABLE task_steps ADD COLUMN thought TEXT;
