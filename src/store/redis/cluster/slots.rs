//! Where each of Redis Cluster's 16384 hash slots lives: read from CLUSTER SLOTS, owned by the
//! proxy (not by fred, whose clustered client stalls every slot while one master is down).

use fred::types::Value;

/// Hash slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// CRC16/XMODEM, as Redis Cluster hashes keys, 16 bytes per step. Every key a cluster reads is
/// hashed, and the byte-at-a-time table of fred's `redis_keyslot` was 14% of the proxy's samples
/// at batch 100 (benches/RESULTS.md, "Redis Cluster at nearly the cost of one Redis").
const CRC16: crc::Crc<u16, crc::Table<16>> =
    crc::Crc::<u16, crc::Table<16>>::new(&crc::CRC_16_XMODEM);

/// The hash slot of a key: CRC16 of the whole key, or of what is between its first `{` and the
/// `}` after it when that is not empty (the hash tag), as Redis does.
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    CRC16.checksum(tagged.unwrap_or(key)) % SLOTS as u16
}

/// One range of slots and the servers that hold it ("host:port").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub start: u16,
    pub end: u16,
    pub primary: String,
    pub replicas: Vec<String>,
}

/// The cluster's slot map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    ranges: Vec<Range>,
    /// Per slot, the index of its range; `NONE` where no node serves it.
    owner: Vec<u16>,
}

const NONE: u16 = u16::MAX;

impl SlotMap {
    /// Reads a CLUSTER SLOTS reply. `asked` is the "host:port" of the node that answered: an
    /// empty host in the reply means that node's host.
    pub fn parse(reply: Value, asked: &str) -> Result<SlotMap, String> {
        let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
        let Value::Array(entries) = reply else {
            return Err(format!(
                "CLUSTER SLOTS answered {:?}, not an array",
                reply.kind()
            ));
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let mut parts = entry.into_array().into_iter();
            let bound = |v: Option<Value>| -> Result<u16, String> {
                v.and_then(|v| v.as_i64())
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|&n| (n as usize) < SLOTS)
                    .ok_or_else(|| "a slot range without valid bounds".to_string())
            };
            let start = bound(parts.next())?;
            let end = bound(parts.next())?;
            let mut servers = parts.map(|s| server(s, asked_host));
            let primary = servers
                .next()
                .ok_or_else(|| format!("slots {start}-{end} have no primary"))??;
            let replicas = servers.collect::<Result<Vec<_>, _>>()?;
            ranges.push(Range {
                start,
                end,
                primary,
                replicas,
            });
        }
        ranges.sort_by_key(|r| r.start);
        let mut owner = vec![NONE; SLOTS];
        for (i, r) in ranges.iter().enumerate() {
            if r.start > r.end {
                return Err(format!("slot range {}-{} is reversed", r.start, r.end));
            }
            owner[r.start as usize..=r.end as usize].fill(i as u16);
        }
        Ok(SlotMap { ranges, owner })
    }

    /// The range holding `slot`, if any node serves it.
    pub fn range(&self, slot: u16) -> Option<usize> {
        match self.owner.get(slot as usize) {
            Some(&NONE) | None => None,
            Some(&i) => Some(i as usize),
        }
    }

    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    /// True when some slot has another primary (or none) in `other`: a failover or resharding.
    pub fn primaries_differ(&self, other: &SlotMap) -> bool {
        (0..SLOTS as u16).any(|s| {
            self.range(s).map(|i| &self.ranges[i].primary)
                != other.range(s).map(|i| &other.ranges[i].primary)
        })
    }
}

/// One server of a range: `[host, port, id, ...]` as "host:port".
fn server(v: Value, asked_host: &str) -> Result<String, String> {
    let mut parts = v.into_array().into_iter();
    let host = parts.next().and_then(|h| h.as_string()).unwrap_or_default();
    let port = parts
        .next()
        .and_then(|p| p.as_i64())
        .ok_or_else(|| "a server without a port".to_string())?;
    let host = if host.is_empty() || host == "?" {
        asked_host.to_string()
    } else {
        host
    };
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slots_are_redis_s_for_keys_with_and_without_hash_tags() {
        // CLUSTER KEYSLOT's answers (the research note's edge keys, checked against Redis).
        for (key, slot) in [
            (&b"8xjx7vWrfPq54mKfFD3Y1CcjjofpnAcQ"[..], 5458),
            (b"123456789", 12739),
            (b"foo", 12182),
            (b"{user1000}.following", 3443),
            (b"{user1000}.followers", 3443),
        ] {
            assert_eq!(slot_of(key), slot, "{}", String::from_utf8_lossy(key));
        }
        for (key, same_as) in [
            (&b"foo{}{bar}"[..], &b"foo{}{bar}"[..]),
            (b"foo{{bar}}zap", b"{bar"),
            (b"foo{bar}{zap}", b"bar"),
            (b"a{b}c{d}", b"b"),
            (b"abc{", b"abc{"),
            (b"}{abc", b"}{abc"),
            (b"", b""),
        ] {
            assert_eq!(slot_of(key), CRC16.checksum(same_as) % 16384);
        }
    }

    proptest! {
        #[test]
        fn slots_agree_with_fred_for_any_key(key in proptest::collection::vec(
            prop_oneof![Just(b'{'), Just(b'}'), any::<u8>()], 0..64)) {
            prop_assert_eq!(slot_of(&key), fred::util::redis_keyslot(&key));
        }
    }

    fn server(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::String(host.into()),
            Value::Integer(port),
            Value::String("id".into()),
        ])
    }

    #[test]
    fn parses_cluster_slots_and_finds_each_slots_node() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Integer(5461),
                Value::Integer(16383),
                server("127.0.0.1", 7001),
            ]),
            Value::Array(vec![
                Value::Integer(0),
                Value::Integer(5460),
                server("", 7000),
                server("10.0.0.2", 7003),
            ]),
        ]);
        let map = SlotMap::parse(reply, "10.0.0.9:7000").unwrap();
        let r0 = &map.ranges()[map.range(0).unwrap()];
        assert_eq!(
            (r0.primary.as_str(), &r0.replicas[..]),
            ("10.0.0.9:7000", &["10.0.0.2:7003".to_string()][..])
        );
        assert_eq!(
            map.ranges()[map.range(16383).unwrap()].primary,
            "127.0.0.1:7001"
        );
        assert_eq!(map.range(5461), map.range(9000));
        let mut moved = map.clone();
        moved.ranges[1].primary = "127.0.0.1:7004".into();
        assert!(map.primaries_differ(&moved) && !map.primaries_differ(&map.clone()));
        // Well-known slots: "foo" is 12182, a hash tag hashes only the tag.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert!(SlotMap::parse(Value::Integer(1), "h:1").is_err());
        let partial = Value::Array(vec![Value::Array(vec![
            Value::Integer(0),
            Value::Integer(10),
            server("h", 1),
        ])]);
        assert_eq!(SlotMap::parse(partial, "h:1").unwrap().range(11), None);
    }
}
