-- A moderator's round in #random: promote a moderator, edit a message, remove the lunch
-- chatter, and check that the triggers kept the counters right. Runs again and again on the
-- same actor: the promotion is an upsert, the edit and the delete are idempotent.

INSERT INTO members(room_id, user_id, role, joined_at)
SELECT rooms.id, users.id, 'moderator', rooms.created_at
FROM rooms, users
WHERE rooms.slug = 'random' AND users.handle = 'grace'
ON CONFLICT(room_id, user_id) DO UPDATE SET role = excluded.role;

BEGIN IMMEDIATE;
UPDATE messages
SET body = body || ' (edited)', edited_at = sent_at + 300
WHERE room_id = (SELECT id FROM rooms WHERE slug = 'random')
  AND edited_at IS NULL
  AND body LIKE '%the build is green';
DELETE FROM messages
WHERE room_id = (SELECT id FROM rooms WHERE slug = 'random')
  AND body LIKE '%lunch;%';
COMMIT;

-- Who moderates what.
SELECT rooms.slug, users.handle, members.role
FROM members
JOIN rooms ON rooms.id = members.room_id
JOIN users ON users.id = members.user_id
WHERE members.role <> 'member'
ORDER BY rooms.slug, users.handle;

-- The trigger-kept counters next to a fresh count: the two columns must agree.
SELECT rooms.slug, room_stats.message_count,
       (SELECT count(*) FROM messages WHERE messages.room_id = rooms.id) AS counted
FROM rooms LEFT JOIN room_stats ON room_stats.room_id = rooms.id
ORDER BY rooms.slug;
