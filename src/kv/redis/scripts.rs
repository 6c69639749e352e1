//! The two Lua scripts every call runs, how their arguments are encoded and how their replies
//! are decoded.
//!
//! Why it exists: a Redis script runs atomically on the master of its keys' slot, so each trait
//! call is exactly one script call: all of a batch read sees one state, and a write checks its
//! preconditions and applies everything, or nothing, with no other command in between.
//!
//! Keys of the scripts: `KEYS[1]` is the actor's hash (field = KV key, value = KV value),
//! `KEYS[2]` its sorted set (member = KV key, score 0, so `ZRANGEBYLEX` walks keys in plain
//! byte order).

use redis::Value;

use super::cluster::surprise;
use crate::kv::{key_after, ListPage, ListRequest, ReadOp, ReadResult, Value as KvValue};

/// The read script: `ARGV` is a sequence of ops, `g COUNT KEY…` (a get) or
/// `l MIN MAX LIMIT BUDGET` (a list; `MIN`/`MAX` in `ZRANGEBYLEX` syntax, `BUDGET` -1 for none).
/// It answers one array per op: a get's values (nil when absent); a list's keys and values
/// interleaved, then 1 when keys remain past the page, else 0.
pub const READ_SCRIPT: &str = r#"#!lua flags=no-writes
local h, z = KEYS[1], KEYS[2]
local out = {}
local i = 1
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'g' then
    local n = tonumber(ARGV[i + 1])
    local vals = {}
    for j = 1, n do
      vals[j] = redis.call('HGET', h, ARGV[i + 1 + j])
    end
    out[#out + 1] = vals
    i = i + 2 + n
  elseif op == 'l' then
    local limit = tonumber(ARGV[i + 3])
    local budget = tonumber(ARGV[i + 4])
    local members = redis.call('ZRANGEBYLEX', z, ARGV[i + 1], ARGV[i + 2], 'LIMIT', 0, limit + 1)
    local page = {}
    local n, bytes, more = 0, 0, 0
    for _, k in ipairs(members) do
      if n == limit or (n > 0 and budget >= 0 and bytes >= budget) then
        more = 1
        break
      end
      local v = redis.call('HGET', h, k)
      if not v then
        return redis.error_reply('KVSQLITE index names a key that has no value')
      end
      page[#page + 1] = k
      page[#page + 1] = v
      n = n + 1
      bytes = bytes + #k + #v
    end
    page[#page + 1] = more
    out[#out + 1] = page
    i = i + 5
  else
    return redis.error_reply('KVSQLITE unknown read op')
  end
end
return out
"#;

/// The write script: `ARGV` is `NPRE (KEY HAS VALUE)… NDEL KEY… NPUT (KEY VALUE)… RANGE [MIN
/// MAX]` (`HAS` 1 when the key must hold `VALUE`, 0 when it must be absent; `RANGE` 1 to delete
/// a `ZRANGEBYLEX` range). It checks every precondition first and answers the 0-based index of
/// the first unmet one, having written nothing; otherwise it applies the range delete, the
/// deletes and the puts and answers -1. The `#!lua` line makes Redis refuse the script before
/// it runs when it cannot write (out of memory, a replica), so it never stops halfway.
pub const WRITE_SCRIPT: &str = r#"#!lua
local h, z = KEYS[1], KEYS[2]
local i = 1
local npre = tonumber(ARGV[i]); i = i + 1
for p = 0, npre - 1 do
  local cur = redis.call('HGET', h, ARGV[i])
  local ok
  if ARGV[i + 1] == '1' then ok = (cur == ARGV[i + 2]) else ok = (cur == false) end
  if not ok then return p end
  i = i + 3
end
local ndel = tonumber(ARGV[i]); i = i + 1
local dels = i
i = i + ndel
local nput = tonumber(ARGV[i]); i = i + 1
local puts = i
i = i + 2 * nput
if ARGV[i] == '1' then
  local members = redis.call('ZRANGEBYLEX', z, ARGV[i + 1], ARGV[i + 2])
  for _, k in ipairs(members) do
    redis.call('HDEL', h, k)
  end
  redis.call('ZREMRANGEBYLEX', z, ARGV[i + 1], ARGV[i + 2])
end
for j = dels, dels + ndel - 1 do
  redis.call('HDEL', h, ARGV[j])
  redis.call('ZREM', z, ARGV[j])
end
for j = puts, puts + 2 * nput - 1, 2 do
  redis.call('HSET', h, ARGV[j], ARGV[j + 1])
  redis.call('ZADD', z, 0, ARGV[j])
end
return -1
"#;

/// `ZRANGEBYLEX` bounds for `[start, end)`: `-` or `[start`, and `+` or `(end`.
pub fn lex_bounds(start: &[u8], end: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let min = if start.is_empty() {
        b"-".to_vec()
    } else {
        [b"[".as_slice(), start].concat()
    };
    let max = match end {
        Some(e) => [b"(".as_slice(), e].concat(),
        None => b"+".to_vec(),
    };
    (min, max)
}

/// Appends the arguments of one list op.
pub fn push_list(args: &mut Vec<Vec<u8>>, req: &ListRequest, limit: usize) {
    let (start, end) = req.range.bounds();
    let (min, max) = lex_bounds(&start, end.as_deref());
    args.push(b"l".to_vec());
    args.push(min);
    args.push(max);
    args.push(limit.to_string().into_bytes());
    args.push(match req.max_bytes {
        Some(b) => b.to_string().into_bytes(),
        None => b"-1".to_vec(),
    });
}

/// Appends the arguments of one get op.
pub fn push_get(args: &mut Vec<Vec<u8>>, keys: &[Vec<u8>]) {
    args.push(b"g".to_vec());
    args.push(keys.len().to_string().into_bytes());
    args.extend(keys.iter().cloned());
}

fn bytes(v: Value) -> Result<Vec<u8>, redis::Value> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        other => Err(other),
    }
}

/// Decodes a get's answer: exactly `expected` values, each bytes or nil.
pub fn decode_get(v: Value, expected: usize) -> Result<Vec<Option<KvValue>>, crate::kv::KvError> {
    let Value::Array(items) = v else {
        return Err(surprise(format!("a get answered {v:?}")));
    };
    if items.len() != expected {
        return Err(surprise(format!(
            "a get of {expected} keys answered {} values",
            items.len()
        )));
    }
    items
        .into_iter()
        .map(|item| match item {
            Value::Nil => Ok(None),
            item => bytes(item)
                .map(Some)
                .map_err(|o| surprise(format!("a value is {o:?}"))),
        })
        .collect()
}

/// Decodes a list's answer: keys and values interleaved, then the "more" flag.
pub fn decode_list(v: Value) -> Result<ListPage, crate::kv::KvError> {
    let Value::Array(mut items) = v else {
        return Err(surprise(format!("a list answered {v:?}")));
    };
    let more = match items.pop() {
        Some(Value::Int(0)) => false,
        Some(Value::Int(1)) => true,
        other => return Err(surprise(format!("a list ended with {other:?}"))),
    };
    if items.len() % 2 != 0 {
        return Err(surprise("a list answered a key without a value".into()));
    }
    let mut entries = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let k = bytes(k).map_err(|o| surprise(format!("a listed key is {o:?}")))?;
        let v = bytes(v).map_err(|o| surprise(format!("a listed value is {o:?}")))?;
        entries.push((k, v));
    }
    let next_start = match (more, entries.last()) {
        (true, Some((k, _))) => Some(key_after(k)),
        (true, None) => return Err(surprise("a list has more keys but returned none".into())),
        (false, _) => None,
    };
    Ok(ListPage {
        entries,
        next_start,
    })
}

/// Decodes a batch read's answer: one result per op, in order.
pub fn decode_batch(v: Value, ops: &[ReadOp]) -> Result<Vec<ReadResult>, crate::kv::KvError> {
    let Value::Array(items) = v else {
        return Err(surprise(format!("a batch read answered {v:?}")));
    };
    if items.len() != ops.len() {
        return Err(surprise(format!(
            "a batch of {} reads answered {}",
            ops.len(),
            items.len()
        )));
    }
    ops.iter()
        .zip(items)
        .map(|(op, item)| match op {
            ReadOp::Get(keys) => decode_get(item, keys.len()).map(ReadResult::Get),
            ReadOp::List(_) => decode_list(item).map(ReadResult::List),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lex_bounds_cover_the_range() {
        assert_eq!(lex_bounds(b"", None), (b"-".to_vec(), b"+".to_vec()));
        assert_eq!(
            lex_bounds(b"a", Some(b"b")),
            (b"[a".to_vec(), b"(b".to_vec())
        );
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        assert!(decode_get(Value::Int(3), 1).is_err());
        assert!(decode_get(Value::Array(vec![]), 1).is_err());
        assert!(decode_get(Value::Array(vec![Value::Int(1)]), 1).is_err());
        assert!(decode_list(Value::Array(vec![])).is_err());
        assert!(decode_list(Value::Array(vec![Value::Int(1)])).is_err());
        assert!(decode_list(Value::Array(vec![Value::Nil, Value::Int(0)])).is_err());
        let page = decode_list(Value::Array(vec![
            Value::BulkString(b"k".to_vec()),
            Value::BulkString(b"v".to_vec()),
            Value::Int(1),
        ]))
        .unwrap();
        assert_eq!(page.next_start, Some(b"k\0".to_vec()));
        assert!(decode_batch(Value::Array(vec![]), &[ReadOp::Get(vec![])]).is_err());
    }
}
