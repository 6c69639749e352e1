-- A visit to #general: a new user joins, says hello in one transaction, gets a reply, catches
-- up, and reads the room. Runs again and again on the same actor: the join is an upsert, and
-- each run's messages are timed after the room's latest one.

INSERT OR IGNORE INTO users(handle, display_name) VALUES ('linus', 'Linus Torvalds');

INSERT INTO members(room_id, user_id, role, joined_at)
SELECT rooms.id, users.id, 'member', rooms.created_at + 86400
FROM rooms, users
WHERE rooms.slug = 'general' AND users.handle = 'linus'
ON CONFLICT(room_id, user_id) DO NOTHING;

BEGIN;
INSERT INTO messages(room_id, author_id, body, sent_at)
SELECT rooms.id, users.id, 'Hello everyone; glad to be here!',
       (SELECT coalesce(max(sent_at), rooms.created_at) + 60 FROM messages WHERE room_id = rooms.id)
FROM rooms, users
WHERE rooms.slug = 'general' AND users.handle = 'linus';
INSERT INTO messages(room_id, author_id, body, sent_at)
SELECT rooms.id, users.id, 'Welcome, Linus -- the pinned /* notes */ are in #release.',
       (SELECT max(sent_at) + 15 FROM messages WHERE room_id = rooms.id)
FROM rooms, users
WHERE rooms.slug = 'general' AND users.handle = 'ada';
UPDATE members
SET last_read_message_id = (SELECT max(id) FROM messages WHERE room_id = members.room_id)
WHERE user_id = (SELECT id FROM users WHERE handle = 'linus')
  AND room_id = (SELECT id FROM rooms WHERE slug = 'general');
COMMIT;

-- The room's latest 20 messages, newest first.
SELECT messages.id, users.display_name AS author, messages.body, messages.sent_at
FROM messages JOIN users ON users.id = messages.author_id
WHERE messages.room_id = (SELECT id FROM rooms WHERE slug = 'general')
ORDER BY messages.sent_at DESC, messages.id DESC
LIMIT 20;

-- Linus's rooms with their unread counts.
SELECT rooms.slug, rooms.title, count(messages.id) AS unread
FROM members
JOIN rooms ON rooms.id = members.room_id
LEFT JOIN messages ON messages.room_id = members.room_id
                  AND messages.id > members.last_read_message_id
WHERE members.user_id = (SELECT id FROM users WHERE handle = 'linus')
GROUP BY rooms.id
ORDER BY rooms.slug;
