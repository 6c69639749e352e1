//! Packing writes into KV batches that respect the store's limits.
//!
//! Why it exists: a commit must cost as few round trips as the limits allow, and the commit
//! record (the metadata put) must land last and atomically with whatever is packed beside it.
//! The planning is pure (no I/O) so it is tested on its own.

use crate::kv::{Key, KvLimits, Value, WriteBatch};

/// Bytes a put of `k`/`v` counts against `max_write_bytes`.
pub fn put_cost(k: &[u8], v: &[u8]) -> usize {
    k.len() + v.len()
}

/// Packs `puts` into as few batches as the limits allow, in order, then appends `last` (the
/// commit record and anything that must land with it) to the final batch, opening a new batch
/// if it does not fit. `last` is always in the final batch. Returns an error message when one
/// entry alone cannot fit a batch.
pub fn pack(
    puts: Vec<(Key, Value)>,
    last: Vec<(Key, Value)>,
    limits: &KvLimits,
) -> Result<Vec<WriteBatch>, String> {
    let last_entries = last.len();
    let last_bytes: usize = last.iter().map(|(k, v)| put_cost(k, v)).sum();
    if last_entries > limits.max_write_entries || last_bytes > limits.max_write_bytes {
        return Err(format!(
            "the commit record ({last_bytes} bytes, {last_entries} entries) does not fit one write"
        ));
    }
    let mut batches: Vec<WriteBatch> = Vec::new();
    let mut cur = WriteBatch::default();
    let mut cur_bytes = 0usize;
    for (k, v) in puts {
        let c = put_cost(&k, &v);
        if c > limits.max_write_bytes {
            return Err(format!(
                "one entry of {c} bytes exceeds the write byte limit"
            ));
        }
        if cur.puts.len() + 1 > limits.max_write_entries || cur_bytes + c > limits.max_write_bytes {
            batches.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur.puts.push((k, v));
        cur_bytes += c;
    }
    if cur.puts.len() + last_entries > limits.max_write_entries
        || cur_bytes + last_bytes > limits.max_write_bytes
    {
        batches.push(std::mem::take(&mut cur));
    }
    cur.puts.extend(last);
    batches.push(cur);
    Ok(batches)
}

/// Adds deletes of `garbage` keys to `batch` while it stays within the limits; returns how many
/// were taken from the front of `garbage`.
pub fn piggyback_deletes(batch: &mut WriteBatch, garbage: &[Key], limits: &KvLimits) -> usize {
    let mut bytes: usize = batch
        .puts
        .iter()
        .map(|(k, v)| put_cost(k, v))
        .sum::<usize>()
        + batch.deletes.iter().map(|k| k.len()).sum::<usize>();
    let mut taken = 0;
    for k in garbage {
        if batch.puts.len() + batch.deletes.len() + 1 > limits.max_write_entries
            || bytes + k.len() > limits.max_write_bytes
        {
            break;
        }
        bytes += k.len();
        batch.deletes.push(k.clone());
        taken += 1;
    }
    taken
}

/// Splits the pages of a large commit: how many of the *last* pages (each `page_cost` bytes of
/// key and value) can ride in the final batch beside a commit record of `record_entries`
/// entries and `record_bytes` bytes; the rest are staged.
pub fn final_batch_pages(
    page_cost: usize,
    pages: usize,
    record_bytes: usize,
    record_entries: usize,
    limits: &KvLimits,
) -> usize {
    let by_entries = limits.max_write_entries.saturating_sub(record_entries);
    let by_bytes = limits.max_write_bytes.saturating_sub(record_bytes) / page_cost.max(1);
    pages.min(by_entries).min(by_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(entries: usize, bytes: usize) -> KvLimits {
        KvLimits {
            max_write_entries: entries,
            max_write_bytes: bytes,
            ..KvLimits::default()
        }
    }

    #[test]
    fn packs_to_the_limits_with_the_record_last() {
        let puts: Vec<_> = (0..10u8).map(|i| (vec![i], vec![0; 9])).collect();
        let b = pack(puts, vec![(vec![99], vec![1])], &limits(4, 1000)).unwrap();
        assert_eq!(
            b.iter().map(|b| b.puts.len()).collect::<Vec<_>>(),
            vec![4, 4, 3]
        );
        assert_eq!(b.last().unwrap().puts.last().unwrap().0, vec![99]);
        let puts: Vec<_> = (0..4u8).map(|i| (vec![i], vec![0; 9])).collect();
        let b = pack(puts, vec![(vec![99], vec![1])], &limits(4, 1000)).unwrap();
        assert_eq!(
            b.iter().map(|b| b.puts.len()).collect::<Vec<_>>(),
            vec![4, 1]
        );
        // Bytes bound: 10 bytes each, 25 allowed.
        let puts: Vec<_> = (0..5u8).map(|i| (vec![i], vec![0; 9])).collect();
        let b = pack(puts, vec![], &limits(100, 25)).unwrap();
        assert_eq!(
            b.iter().map(|b| b.puts.len()).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        assert_eq!(final_batch_pages(10, 50, 5, 1, &limits(4, 1000)), 3);
        assert_eq!(final_batch_pages(10, 50, 5, 3, &limits(4, 1000)), 1);
        assert_eq!(final_batch_pages(10, 50, 975, 1, &limits(128, 1000)), 2);
        let mut wb = WriteBatch::default();
        wb.puts.push((vec![1], vec![2]));
        assert_eq!(
            piggyback_deletes(&mut wb, &[vec![5], vec![6], vec![7]], &limits(3, 100)),
            2
        );
    }
}
