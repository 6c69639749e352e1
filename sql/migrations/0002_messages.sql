-- Messages, the indexes the room views need, and per-room counters kept by triggers.

CREATE TABLE messages (
    id        INTEGER PRIMARY KEY,
    room_id   INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    author_id INTEGER NOT NULL REFERENCES users(id),
    body      TEXT NOT NULL CHECK (length(body) BETWEEN 1 AND 4000),
    sent_at   INTEGER NOT NULL,
    edited_at INTEGER
);

-- A room's timeline, newest first, is the hottest query.
CREATE INDEX messages_by_room_time ON messages(room_id, sent_at, id);
-- "Which rooms am I in?"
CREATE INDEX members_by_user ON members(user_id);

CREATE TABLE room_stats (
    room_id         INTEGER PRIMARY KEY REFERENCES rooms(id) ON DELETE CASCADE,
    message_count   INTEGER NOT NULL DEFAULT 0,
    last_message_at INTEGER
);

CREATE TRIGGER messages_count_insert AFTER INSERT ON messages
BEGIN
    INSERT INTO room_stats(room_id, message_count, last_message_at)
    VALUES (new.room_id, 1, new.sent_at)
    ON CONFLICT(room_id) DO UPDATE SET
        message_count = message_count + 1,
        last_message_at = max(coalesce(last_message_at, 0), excluded.last_message_at);
END;

CREATE TRIGGER messages_count_delete AFTER DELETE ON messages
BEGIN
    UPDATE room_stats SET message_count = message_count - 1 WHERE room_id = old.room_id;
END;
