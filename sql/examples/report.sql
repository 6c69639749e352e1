-- Read-only analytics over the whole actor: activity per room and hour, the top posters of
-- each room, and a JSON digest of each room's last three messages.

SELECT rooms.slug,
       strftime('%Y-%m-%d %H:00', messages.sent_at, 'unixepoch') AS hour,
       count(*) AS messages
FROM messages JOIN rooms ON rooms.id = messages.room_id
GROUP BY rooms.slug, hour
ORDER BY rooms.slug, hour
LIMIT 30;

WITH per_author AS (
    SELECT room_id, author_id, count(*) AS posts
    FROM messages
    GROUP BY room_id, author_id
)
SELECT rooms.slug, users.handle, per_author.posts,
       rank() OVER (PARTITION BY per_author.room_id ORDER BY per_author.posts DESC) AS place
FROM per_author
JOIN rooms ON rooms.id = per_author.room_id
JOIN users ON users.id = per_author.author_id
ORDER BY rooms.slug, place, users.handle;

SELECT rooms.slug,
       json_group_array(json_object('id', recent.id, 'body', recent.body)) AS last_three
FROM rooms
JOIN (
    SELECT id, room_id, body,
           row_number() OVER (PARTITION BY room_id ORDER BY sent_at DESC, id DESC) AS k
    FROM messages
) AS recent ON recent.room_id = rooms.id AND recent.k <= 3
GROUP BY rooms.id
ORDER BY rooms.slug;
