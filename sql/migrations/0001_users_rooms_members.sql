-- The chat app's people and places: users, rooms, and who belongs to which room.
-- Times are seconds since the Unix epoch, always written by the app (no wall clock in SQL),
-- so replaying the same writes gives the same database.

CREATE TABLE users (
    id           INTEGER PRIMARY KEY,
    handle       TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL
);

CREATE TABLE rooms (
    id         INTEGER PRIMARY KEY,
    slug       TEXT NOT NULL UNIQUE,
    title      TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE members (
    room_id              INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id              INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role                 TEXT NOT NULL DEFAULT 'member'
                         CHECK (role IN ('owner', 'moderator', 'member')),
    joined_at            INTEGER NOT NULL,
    last_read_message_id INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;
