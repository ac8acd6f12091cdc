//! The payloads of `switchboard_events` notifications: what a committed
//! transaction stored, as one line per stream, `s <session> <from> <to>`
//! or `a <from> <to>` (audit), lines joined by `\n`. A batch sends one
//! notification, or several when its lines pass PostgreSQL's 8000-byte
//! payload limit.

use std::collections::HashMap;

use uuid::Uuid;

use crate::event::StreamKey;

/// Bytes of lines one payload carries at most (PostgreSQL refuses payloads
/// of 8000 bytes or more).
const MAX_PAYLOAD: usize = 7900;

/// The stored ranges of `events` (session, seq, in batch order: a stream's
/// seqs ascend), and of the audit records `audit` (`from..=to`), as
/// payloads.
pub(super) fn payloads(sessions: &[Uuid], seqs: &[i64], audit: Option<(i64, i64)>) -> Vec<String> {
    let mut ranges: Vec<(Uuid, i64, i64)> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    for (&session, &seq) in sessions.iter().zip(seqs) {
        match index.get(&session) {
            Some(&i) => ranges[i].2 = seq,
            None => {
                index.insert(session, ranges.len());
                ranges.push((session, seq, seq));
            }
        }
    }
    let lines = ranges
        .into_iter()
        .map(|(s, from, to)| format!("s {s} {from} {to}"))
        .chain(audit.map(|(from, to)| format!("a {from} {to}")));
    let mut out: Vec<String> = Vec::new();
    for line in lines {
        match out.last_mut() {
            Some(p) if p.len() + 1 + line.len() <= MAX_PAYLOAD => {
                p.push('\n');
                p.push_str(&line);
            }
            _ => out.push(line),
        }
    }
    out
}

/// The streams and seq ranges of a payload; lines that do not parse are
/// skipped.
pub(super) fn parse(payload: &str) -> Vec<(StreamKey, i64, i64)> {
    payload.lines().filter_map(parse_line).collect()
}

/// `s <session> <from> <to>` or `a <from> <to>`.
fn parse_line(line: &str) -> Option<(StreamKey, i64, i64)> {
    let mut parts = line.split(' ');
    let key = match parts.next()? {
        "s" => StreamKey::Session(parts.next()?.parse().ok()?),
        "a" => StreamKey::Audit,
        _ => return None,
    };
    let from = parts.next()?.parse().ok()?;
    let to = parts.next()?.parse().ok()?;
    Some((key, from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Event notifications parse, one range per line; junk is skipped.
    #[test]
    fn payloads_parse() {
        let id = Uuid::new_v4();
        assert_eq!(
            parse(&format!("s {id} 3 5")),
            vec![(StreamKey::Session(id), 3, 5)]
        );
        assert_eq!(parse("a 7 7"), vec![(StreamKey::Audit, 7, 7)]);
        assert_eq!(
            parse(&format!("s {id} 1 2\nx\na 4 9")),
            vec![(StreamKey::Session(id), 1, 2), (StreamKey::Audit, 4, 9)]
        );
        assert!(parse("s nope 1 2").is_empty());
        assert!(parse("x").is_empty());
    }

    /// A batch's events become one range per stream, audit last, and what
    /// is written parses back to the same ranges.
    #[test]
    fn ranges_round_trip() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let out = payloads(&[a, b, a, a, b], &[4, 1, 5, 6, 2], Some((10, 12)));
        assert_eq!(out, vec![format!("s {a} 4 6\ns {b} 1 2\na 10 12")]);
        assert_eq!(
            parse(&out[0]),
            vec![
                (StreamKey::Session(a), 4, 6),
                (StreamKey::Session(b), 1, 2),
                (StreamKey::Audit, 10, 12)
            ]
        );
        assert!(payloads(&[], &[], None).is_empty());
    }

    /// Many streams split into several payloads, each under the limit, and
    /// together they carry every range once.
    #[test]
    fn long_batches_split() {
        let ids: Vec<Uuid> = (0..1000).map(|_| Uuid::new_v4()).collect();
        let seqs: Vec<i64> = (0..1000).map(|i| i * 1000 + 999_999).collect();
        let out = payloads(&ids, &seqs, Some((1, 2)));
        assert!(out.len() > 1);
        assert!(out.iter().all(|p| p.len() < 8000));
        let ranges: Vec<_> = out.iter().flat_map(|p| parse(p)).collect();
        assert_eq!(ranges.len(), 1001);
        assert_eq!(
            ranges[999],
            (StreamKey::Session(ids[999]), seqs[999], seqs[999])
        );
    }
}
