//! A batch's reads as commands on one node's connection, and the replies back, key by key.
//!
//! Keys are read in groups: every key of a batch on a standalone node, or the keys of one hash
//! slot on a cluster node (Redis refuses an MGET across two slots, even on one node). A group is
//! one MGET of its whole values and one HMGET per hash. All the groups bound for one node are
//! encoded into its connection together and leave in one write: 100 one-key MGETs cost Redis
//! 4.1x an MGET of 100 when they arrive as 100 writes, 1.25x as one (research note
//! `bucketed-layout.md`, 3.2).

use bytes::BytesMut;
use redis_protocol::resp2::types::BytesFrame;

use super::resp;
use crate::store::{Failure, Fetched, Landing, ReadCommand, ReadKey, StoreError};

/// The keys of a batch read together, by their positions in the batch.
#[derive(Debug, Clone, Copy)]
pub enum Group<'a> {
    /// The batch's first `n` keys: a standalone node reads a whole batch as one group.
    Whole(usize),
    /// One hash slot's keys: `(slot, position)` pairs of the batch's keys sorted by slot.
    Slot(&'a [(u16, usize)]),
}

impl<'a> Group<'a> {
    /// The positions of the group's keys in the batch, in the order they are asked.
    pub fn positions(self) -> impl Iterator<Item = usize> + Clone + 'a {
        let (whole, slot) = match self {
            Group::Whole(n) => (n, &[][..]),
            Group::Slot(entries) => (0, entries),
        };
        (0..whole).chain(slot.iter().map(|&(_, i)| i))
    }

    /// The number of keys in the group.
    pub fn len(self) -> usize {
        match self {
            Group::Whole(n) => n,
            Group::Slot(entries) => entries.len(),
        }
    }

    /// True for a group of no keys (which sends no command).
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The group's keys of each kind: whole values (one MGET) and hashes (an HMGET each).
    fn counts(self, keys: &[ReadKey]) -> (usize, usize) {
        let values = self
            .positions()
            .filter(|&i| keys[i].command == ReadCommand::Value)
            .count();
        (values, self.len() - values)
    }

    /// How many replies the group's commands get.
    pub fn replies(self, keys: &[ReadKey]) -> usize {
        let (values, hashes) = self.counts(keys);
        usize::from(values > 0) + hashes
    }

    /// Appends the group's commands to `out`: the MGET first, then the HMGETs in key order.
    pub fn encode(self, keys: &[ReadKey], out: &mut BytesMut) {
        let (values, _) = self.counts(keys);
        if values > 0 {
            let value_keys = self
                .positions()
                .map(|i| &keys[i])
                .filter(|k| k.command == ReadCommand::Value);
            resp::encode_mget(out, values, value_keys.map(|k| &k.key[..]));
        }
        for k in self.positions().map(|i| &keys[i]) {
            if let ReadCommand::Fields(f) = &k.command {
                resp::encode_hmget(out, &k.key, f.fields());
            }
        }
    }

    /// Takes the group's replies from `replies` (all of them, whatever they say, so that the next
    /// group's start where they should) and lands each key's outcome. A key holding another type
    /// than its read expects is that key's problem (WRONGTYPE, landed as such); any other error
    /// (a redirection, Redis's own message) is returned for the keys not landed, which are then
    /// the caller's to follow or fail.
    pub fn decode(
        self,
        keys: &[ReadKey],
        replies: &mut impl Iterator<Item = BytesFrame>,
        landing: &dyn Landing,
    ) -> Result<(), StoreError> {
        let (values, _) = self.counts(keys);
        let mut first_error = None;
        let mut failed = |e: StoreError| {
            first_error.get_or_insert(e);
        };
        if values > 0 {
            let mut value_positions = self
                .positions()
                .filter(|&i| keys[i].command == ReadCommand::Value);
            let landed = match replies.next() {
                Some(frame) => resp::mget_reply(frame, values, |fetched| {
                    if let Some(i) = value_positions.next() {
                        landing.put(i, fetched);
                    }
                }),
                None => Err(no_reply()),
            };
            if let Err(e) = landed {
                failed(e);
            }
        }
        for i in self.positions() {
            if let ReadCommand::Fields(f) = &keys[i].command {
                match replies
                    .next()
                    .map(|frame| resp::hmget_reply(frame, f.len()))
                {
                    Some(Ok(fetched)) => landing.put(i, fetched),
                    Some(Err(e)) => failed(e),
                    None => failed(no_reply()),
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Fails the group's keys that have no outcome yet (a key that landed keeps its own).
    pub fn fail(self, landing: &dyn Landing, why: Failure) {
        for i in self.positions() {
            landing.put(i, Fetched::Failed(why));
        }
    }
}

/// What became of one call of `groups` ([`super::node::Node::read_groups`]): the call itself
/// failed, or these groups (by index) got an error reply.
pub type Outcome = Result<Vec<(usize, StoreError)>, StoreError>;

/// Fails the keys a call left without an outcome: every group's when the call failed, else
/// those of the groups that got an error reply.
pub fn fail_unlanded(groups: &[Group<'_>], outcome: &Outcome, landing: &dyn Landing) {
    match outcome {
        Err(e) => groups.iter().for_each(|g| g.fail(landing, e.failure())),
        Ok(failed) => failed
            .iter()
            .for_each(|(n, e)| groups[*n].fail(landing, e.failure())),
    }
}

fn no_reply() -> StoreError {
    StoreError::Unavailable("Redis sent fewer replies than commands".into())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use bytes::Bytes;
    use redis_protocol::resp2::decode::decode_bytes_mut;

    use super::*;
    use crate::store::{FieldSet, Redirect, StoreKey};

    /// Records what lands, by position.
    #[derive(Default)]
    struct Landed(RefCell<Vec<(usize, Fetched)>>);

    impl Landing for Landed {
        fn put(&self, index: usize, fetched: Fetched) {
            self.0.borrow_mut().push((index, fetched));
        }
        fn landed(&self) {}
    }

    fn frames(mut wire: BytesMut) -> Vec<BytesFrame> {
        let mut out = Vec::new();
        while let Some((frame, _, _)) = decode_bytes_mut(&mut wire).unwrap() {
            out.push(frame);
        }
        out
    }

    fn value(key: &str) -> ReadKey {
        ReadKey {
            key: StoreKey::from(key.as_bytes()),
            command: ReadCommand::Value,
        }
    }

    #[test]
    fn slot_groups_encode_one_mget_and_an_hmget_per_hash_and_land_their_own_keys() {
        let fields = FieldSet::new(vec![Bytes::from_static(b"f")]);
        let keys = vec![
            value("a"),
            ReadKey {
                key: StoreKey::from(&b"h"[..]),
                command: ReadCommand::Fields(fields),
            },
            value("b"),
            value("c"),
        ];
        // Sorted by slot: slot 1 holds a and h, slot 2 holds b and c.
        let order = [(1, 0), (1, 1), (2, 2), (2, 3)];
        let (one, two) = (Group::Slot(&order[..2]), Group::Slot(&order[2..]));
        let mut out = BytesMut::new();
        one.encode(&keys, &mut out);
        two.encode(&keys, &mut out);
        assert_eq!(
            &out[..],
            &b"*2\r\n$4\r\nMGET\r\n$1\r\na\r\n*3\r\n$5\r\nHMGET\r\n$1\r\nh\r\n$1\r\nf\r\n*3\r\n$4\r\nMGET\r\n$1\r\nb\r\n$1\r\nc\r\n"[..]
        );
        assert_eq!((one.replies(&keys), two.replies(&keys)), (2, 1));

        // The first slot answers; the second moved: its keys land nothing and say where to go.
        let replies = frames(BytesMut::from(
            &b"*1\r\n$2\r\nva\r\n*1\r\n$2\r\nvh\r\n-MOVED 2 127.0.0.1:7002\r\n"[..],
        ));
        let mut replies = replies.into_iter();
        let landed = Landed::default();
        one.decode(&keys, &mut replies, &landed).unwrap();
        let moved = two.decode(&keys, &mut replies, &landed).unwrap_err();
        assert!(matches!(
            moved,
            StoreError::Redirected(Redirect::Moved { slot: 2, .. })
        ));
        assert_eq!(
            landed.0.take(),
            [
                (0, Fetched::Value(Bytes::from_static(b"va"))),
                (1, Fetched::Fields(vec![Some(Bytes::from_static(b"vh"))])),
            ]
        );
        assert!(replies.next().is_none(), "every reply taken");
    }

    #[test]
    fn a_whole_batch_is_one_group_and_missing_replies_land_nothing_and_say_so() {
        let keys = vec![value("a"), value("b")];
        let whole = Group::Whole(2);
        assert_eq!(whole.positions().collect::<Vec<_>>(), [0, 1]);
        let landed = Landed::default();
        let e = whole
            .decode(&keys, &mut std::iter::empty(), &landed)
            .unwrap_err();
        assert!(e.to_string().contains("fewer replies"), "{e}");
        assert!(landed.0.take().is_empty());
    }
}
