//! `kvsqlite kv`: inspect and edit one actor's raw keys in a store.
//!
//! Keys and values are given as UTF-8 text, or as hex with a `0x` prefix (`0x00ff`). They are
//! shown as text when they are printable UTF-8 that does not itself start with `0x`, and as `0x…`
//! hex otherwise, so whatever is printed can be typed back. `--hex` shows everything as hex.
//!
//! Exit codes: 0 on success, 1 when `get` finds a key absent, 2 on any error (one line on
//! standard error).

use clap::{Args, Subcommand};
use kvsqlite::kv::{ActorKv, KvError, ListRequest};

use std::io::Write;

use super::{output_error, GlobalArgs, Stop};

/// Arguments of `kvsqlite kv`.
#[derive(Args, Debug)]
pub struct KvArgs {
    /// The actor whose keys to read or edit.
    #[arg(long, global = true, value_name = "ID")]
    actor: Option<String>,
    /// Show keys and values as hex.
    #[arg(long, global = true)]
    hex: bool,
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Subcommand, Debug)]
enum KvCommand {
    /// List the actor's keys in byte order, one `KEY<TAB>VALUE` line each.
    List {
        /// Only keys starting with this (text or 0x hex).
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many entries (default: all, fetched a page at a time).
        #[arg(long)]
        limit: Option<usize>,
        /// Print keys only.
        #[arg(long)]
        keys_only: bool,
        /// Print whole values (by default values longer than 64 bytes are cut, with their length).
        #[arg(long)]
        full: bool,
    },
    /// Print the values of keys, one `KEY<TAB>VALUE` line each; exits 1 if any is absent.
    Get {
        /// Keys (text or 0x hex).
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Store key/value pairs atomically: `put KEY VALUE [KEY VALUE …]`.
    Put {
        /// Alternating keys and values (text or 0x hex).
        #[arg(required = true, num_args = 2.., value_names = ["KEY", "VALUE"])]
        pairs: Vec<String>,
    },
    /// Decode the actor's SQLite database layout: its files, sizes, chunk counts and stages.
    Files,
    /// Delete keys atomically, or every key with a prefix (`--prefix`), or all (`--all`).
    Delete {
        /// Keys (text or 0x hex).
        keys: Vec<String>,
        /// Delete every key starting with this instead.
        #[arg(long, conflicts_with_all = ["keys", "all"])]
        prefix: Option<String>,
        /// Delete every key of the actor.
        #[arg(long, conflicts_with = "keys")]
        all: bool,
    },
}

/// Parses a key or value argument: `0x` followed by hex digits is bytes, anything else is the
/// UTF-8 text itself.
pub fn parse_bytes(arg: &str) -> Result<Vec<u8>, String> {
    let Some(hex) = arg.strip_prefix("0x").or_else(|| arg.strip_prefix("0X")) else {
        return Ok(arg.as_bytes().to_vec());
    };
    if hex.len() % 2 != 0 {
        return Err(format!(
            "{arg:?}: hex must have an even number of digits (text starting with 0x must be given as hex)"
        ));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| {
                    format!("{arg:?}: not valid hex (text starting with 0x must be given as hex)")
                })
        })
        .collect()
}

/// Renders bytes for display: text when printable UTF-8 not starting with `0x`, else hex.
pub fn show_bytes(bytes: &[u8], force_hex: bool) -> String {
    if !force_hex {
        if let Ok(s) = std::str::from_utf8(bytes) {
            let printable = s.chars().all(|c| !c.is_control());
            if printable && !s.starts_with("0x") && !s.starts_with("0X") {
                return s.to_string();
            }
        }
    }
    kvsqlite::kv::to_hex(bytes)
}

fn show_value(v: &[u8], hex: bool, full: bool) -> String {
    const CUT: usize = 64;
    if full || v.len() <= CUT {
        show_bytes(v, hex)
    } else {
        format!("{}… ({} bytes)", show_bytes(&v[..CUT], true), v.len())
    }
}

/// Runs `kvsqlite kv`.
pub fn run(global: &GlobalArgs, args: KvArgs) -> i32 {
    super::finish("kv", run_inner(global, args))
}

fn run_inner(global: &GlobalArgs, args: KvArgs) -> Result<i32, Stop> {
    let actor = args
        .actor
        .ok_or_else(|| "--actor ID is required".to_string())?;
    let store = global.open_store()?;
    let kv = ActorKv::new(store, &actor).map_err(|e| e.to_string())?;
    let err = |e: KvError| e.to_string();
    let hex = args.hex;
    let mut out = std::io::stdout().lock();
    match args.command {
        KvCommand::List {
            prefix,
            limit,
            keys_only,
            full,
        } => {
            let prefix = prefix.as_deref().map(parse_bytes).transpose()?;
            let mut req = ListRequest::prefix(prefix.clone().unwrap_or_default());
            let page_max = kv.limits().default_list_limit;
            if limit == Some(0) {
                return Err(Stop::from("--limit must be at least 1".to_string()));
            }
            let mut left = limit;
            loop {
                req.limit = Some(left.unwrap_or(page_max).min(page_max));
                let page = kv.list(&req).map_err(err)?;
                for (k, v) in &page.entries {
                    if keys_only {
                        writeln!(out, "{}", show_bytes(k, hex)).map_err(output_error)?;
                    } else {
                        let (k, v) = (show_bytes(k, hex), show_value(v, hex, full));
                        writeln!(out, "{k}\t{v}").map_err(output_error)?;
                    }
                }
                if let Some(l) = left.as_mut() {
                    *l -= page.entries.len().min(*l);
                    if *l == 0 {
                        break;
                    }
                }
                let Some(next) = page.next_start else { break };
                let end = match &prefix {
                    Some(p) => kvsqlite::kv::prefix_successor(p),
                    None => None,
                };
                req = ListRequest::range(next, end);
            }
            Ok(0)
        }
        KvCommand::Files => {
            let mut entries = Vec::new();
            let prefix = vec![kvsqlite::vfs::layout::PREFIX];
            let mut req = ListRequest::prefix(prefix.clone());
            loop {
                let page = kv.list(&req).map_err(err)?;
                entries.extend(page.entries);
                let Some(next) = page.next_start else { break };
                req = ListRequest::range(next, kvsqlite::kv::prefix_successor(&prefix));
            }
            let summary = kvsqlite::vfs::layout::summarize(&entries);
            write!(out, "{}", kvsqlite::vfs::layout::describe(&summary)).map_err(output_error)?;
            Ok(0)
        }
        KvCommand::Get { keys } => {
            let keys: Vec<Vec<u8>> = keys
                .iter()
                .map(|k| parse_bytes(k))
                .collect::<Result<_, _>>()?;
            let values = kv.get(&keys).map_err(err)?;
            let mut code = 0;
            for (k, v) in keys.iter().zip(values) {
                match v {
                    Some(v) => {
                        let (k, v) = (show_bytes(k, hex), show_bytes(&v, hex));
                        writeln!(out, "{k}\t{v}").map_err(output_error)?;
                    }
                    None => {
                        writeln!(out, "{}\t(absent)", show_bytes(k, hex)).map_err(output_error)?;
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        KvCommand::Put { pairs } => {
            if pairs.len() % 2 != 0 {
                return Err(Stop::from(format!(
                    "put takes KEY VALUE pairs; got {} arguments",
                    pairs.len()
                )));
            }
            let entries = pairs
                .chunks(2)
                .map(|p| Ok((parse_bytes(&p[0])?, parse_bytes(&p[1])?)))
                .collect::<Result<Vec<_>, String>>()?;
            let n = entries.len();
            kv.put(entries).map_err(err)?;
            eprintln!("put {n} entries");
            Ok(0)
        }
        KvCommand::Delete { keys, prefix, all } => {
            if let Some(p) = prefix {
                let p = parse_bytes(&p)?;
                let end = kvsqlite::kv::prefix_successor(&p);
                kv.delete_range(&p, end.as_deref()).map_err(err)?;
                if p.is_empty() {
                    eprintln!("deleted every key of actor {actor} (the empty prefix)");
                } else {
                    eprintln!("deleted every key starting with {}", show_bytes(&p, hex));
                }
            } else if all {
                kv.delete_range(&[], None).map_err(err)?;
                eprintln!("deleted every key of actor {actor}");
            } else if keys.is_empty() {
                return Err(Stop::from(
                    "delete needs keys, --prefix P or --all".to_string(),
                ));
            } else {
                let keys: Vec<Vec<u8>> = keys
                    .iter()
                    .map(|k| parse_bytes(k))
                    .collect::<Result<_, _>>()?;
                let n = keys.len();
                kv.delete(keys).map_err(err)?;
                eprintln!("deleted {n} keys (absent keys are not an error)");
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_display_and_parse() {
        let cases: Vec<Vec<u8>> = vec![
            b"hello".to_vec(),
            vec![0, 0xFF, 0x10],
            b"0x41".to_vec(),
            "héllo".as_bytes().to_vec(),
            b"tab\there".to_vec(),
            vec![],
        ];
        for c in cases {
            let shown = show_bytes(&c, false);
            assert_eq!(parse_bytes(&shown).unwrap(), c, "{shown}");
            assert_eq!(parse_bytes(&show_bytes(&c, true)).unwrap(), c);
        }
        assert_eq!(show_bytes(b"abc", false), "abc");
        assert_eq!(show_bytes(&[1, 2], false), "0x0102");
        assert_eq!(parse_bytes("0xAbCd").unwrap(), vec![0xAB, 0xCD]);
        assert!(parse_bytes("0xabc").is_err());
        assert!(parse_bytes("0xzz").is_err());
        assert!(parse_bytes("0xé1").is_err());
    }
}
