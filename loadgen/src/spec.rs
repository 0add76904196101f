//! Parsers for the command-line specs: durations, targets, batch ranges, burst schedules, SLOs.

use std::fmt;
use std::time::Duration;

/// `"250us"`, `"20ms"`, `"1.5s"`, `"2m"`, `"1h"`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500us, 20ms, 1.5s, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        other => return Err(format!("unknown unit {other:?} in duration {s:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration in the unit that reads best: `850us`, `1.25ms`, `3.2s`.
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0}us")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

/// What `--target` points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// featureproxy's binary protocol: `HOST:PORT` or `fp://HOST:PORT`.
    Proxy(String),
    /// Redis or any RESP proxy (twemproxy): `resp://HOST:PORT`.
    Resp(String),
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        let (kind, addr) = match s.split_once("://") {
            Some((scheme, addr)) => (scheme, addr),
            None => ("fp", s),
        };
        if addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(format!(
                "target {s:?}: expected HOST:PORT, fp://HOST:PORT or resp://HOST:PORT"
            ));
        }
        match kind {
            "fp" | "featureproxy" => Ok(Target::Proxy(addr.to_string())),
            "resp" | "redis" => Ok(Target::Resp(addr.to_string())),
            other => Err(format!(
                "target {s:?}: unknown scheme {other:?} (fp:// or resp://)"
            )),
        }
    }

    pub fn addr(&self) -> &str {
        match self {
            Target::Proxy(a) | Target::Resp(a) => a,
        }
    }

    pub fn is_resp(&self) -> bool {
        matches!(self, Target::Resp(_))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Proxy(a) => write!(f, "fp://{a}"),
            Target::Resp(a) => write!(f, "resp://{a}"),
        }
    }
}

/// Entities per request: `N` or `A..B` (inclusive, uniform).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSpec {
    pub min: u32,
    pub max: u32,
}

impl BatchSpec {
    pub fn parse(s: &str) -> Result<BatchSpec, String> {
        let t = s.trim();
        let num = |x: &str| {
            x.trim()
                .parse::<u32>()
                .map_err(|_| format!("batch {s:?}: expected N or A..B with positive integers"))
        };
        let (min, max) = match t.split_once("..") {
            Some((a, b)) => (num(a)?, num(b.strip_prefix('=').unwrap_or(b))?),
            None => {
                let n = num(t)?;
                (n, n)
            }
        };
        if min == 0 {
            return Err(format!("batch {s:?}: at least 1 entity per request"));
        }
        if min > max {
            return Err(format!("batch {s:?}: the range is empty ({min} > {max})"));
        }
        Ok(BatchSpec { min, max })
    }

    pub fn is_fixed(&self) -> bool {
        self.min == self.max
    }
}

impl fmt::Display for BatchSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_fixed() {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
}

/// `FACTORx:LEN/PERIOD`, e.g. `10x:5s/30s`: the rate is multiplied by FACTOR during the last LEN
/// of every PERIOD (so the first burst starts at PERIOD - LEN, counted from the start of the run,
/// warm-up included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    pub factor: f64,
    pub len: Duration,
    pub period: Duration,
}

impl Burst {
    pub fn parse(s: &str) -> Result<Burst, String> {
        let bad = || format!("burst {s:?}: expected FACTORx:LEN/PERIOD, e.g. 10x:5s/30s");
        let (factor, rest) = s.trim().split_once(':').ok_or_else(bad)?;
        let factor: f64 = factor
            .trim()
            .strip_suffix(['x', 'X'])
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())?;
        let (len, period) = rest.split_once('/').ok_or_else(bad)?;
        let (len, period) = (parse_duration(len)?, parse_duration(period)?);
        if !(factor.is_finite() && factor > 0.0) {
            return Err(format!("burst {s:?}: the factor must be > 0"));
        }
        if period.is_zero() || len > period {
            return Err(format!(
                "burst {s:?}: the burst must fit in its period (0 < LEN <= PERIOD)"
            ));
        }
        Ok(Burst {
            factor,
            len,
            period,
        })
    }

    /// The rate multiplier at `t` since the start of the run.
    pub fn multiplier(&self, t: Duration) -> f64 {
        let p = self.period.as_nanos();
        let phase = t.as_nanos() % p;
        if phase >= p - self.len.as_nanos() {
            self.factor
        } else {
            1.0
        }
    }
}

impl fmt::Display for Burst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x:{:?}/{:?}", self.factor, self.len, self.period)
    }
}

/// One bound of an SLO.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// Latency percentile (e.g. 99.9) at most this many microseconds.
    Percentile { pct: f64, max_us: f64 },
    /// The largest latency.
    Max { max_us: f64 },
    /// At most this many errors.
    Errors { max: u64 },
}

/// `p99=1ms,p999=5ms,max=50ms,errors=0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    pub bounds: Vec<(String, Bound)>,
}

/// What an SLO is checked against.
#[derive(Clone, Copy)]
pub struct SloInput<'a> {
    /// Latency in microseconds at a percentile (0..=100).
    pub percentile_us: &'a dyn Fn(f64) -> f64,
    pub max_us: f64,
    pub errors: u64,
}

impl Slo {
    pub fn parse(s: &str) -> Result<Slo, String> {
        let mut bounds = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("SLO {part:?}: expected NAME=VALUE, e.g. p99=1ms"))?;
            let name = name.trim().to_ascii_lowercase();
            let bound = if name == "errors" {
                Bound::Errors {
                    max: value
                        .trim()
                        .parse()
                        .map_err(|_| format!("SLO {part:?}: errors takes a count"))?,
                }
            } else if name == "max" {
                Bound::Max {
                    max_us: parse_duration(value)?.as_secs_f64() * 1e6,
                }
            } else if let Some(p) = name.strip_prefix('p') {
                Bound::Percentile {
                    pct: parse_percentile(p)
                        .ok_or_else(|| format!("SLO {part:?}: unknown percentile {name:?} (p50, p90, p99, p999, p99.9, p9999)"))?,
                    max_us: parse_duration(value)?.as_secs_f64() * 1e6,
                }
            } else {
                return Err(format!(
                    "SLO {part:?}: unknown bound {name:?} (pNN, max, errors)"
                ));
            };
            bounds.push((name, bound));
        }
        if bounds.is_empty() {
            return Err(format!("SLO {s:?} has no bounds"));
        }
        Ok(Slo { bounds })
    }

    /// The bounds that failed, each as a sentence; empty when the SLO holds.
    pub fn evaluate(&self, input: SloInput<'_>) -> Vec<String> {
        let mut failed = Vec::new();
        for (name, bound) in &self.bounds {
            match *bound {
                Bound::Percentile { pct, max_us } => {
                    let got = (input.percentile_us)(pct);
                    if got > max_us {
                        failed.push(format!(
                            "{name} = {} exceeds {}",
                            fmt_us(got),
                            fmt_us(max_us)
                        ));
                    }
                }
                Bound::Max { max_us } => {
                    if input.max_us > max_us {
                        failed.push(format!(
                            "max = {} exceeds {}",
                            fmt_us(input.max_us),
                            fmt_us(max_us)
                        ));
                    }
                }
                Bound::Errors { max } => {
                    if input.errors > max {
                        failed.push(format!("errors = {} exceeds {max}", input.errors));
                    }
                }
            }
        }
        failed
    }
}

/// `"99"` -> 99, `"999"` -> 99.9, `"9999"` -> 99.99, `"99.9"` -> 99.9, `"50"` -> 50.
fn parse_percentile(p: &str) -> Option<f64> {
    if p.contains('.') {
        let v: f64 = p.parse().ok()?;
        return (v > 0.0 && v <= 100.0).then_some(v);
    }
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if p.len() > 2 && !p.starts_with("99") {
        return None;
    }
    let v: f64 = p.parse().ok()?;
    // Two digits are a plain percentage; more are "99" followed by decimals of nines.
    let v = if p.len() <= 2 {
        v
    } else {
        v / 10f64.powi(p.len() as i32 - 2)
    };
    (v > 0.0 && v <= 100.0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(
            parse_duration("1.5ms").unwrap(),
            Duration::from_micros(1500)
        );
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5parsecs").is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("127.0.0.1:7070").unwrap(),
            Target::Proxy("127.0.0.1:7070".into())
        );
        assert_eq!(
            Target::parse("resp://127.0.0.1:6380").unwrap(),
            Target::Resp("127.0.0.1:6380".into())
        );
        assert!(Target::parse("resp://nohost").is_err());
        assert!(Target::parse("http://a:1").is_err());
    }

    #[test]
    fn batch_ranges() {
        assert_eq!(BatchSpec::parse("1").unwrap(), BatchSpec { min: 1, max: 1 });
        assert_eq!(
            BatchSpec::parse("10..100").unwrap(),
            BatchSpec { min: 10, max: 100 }
        );
        assert_eq!(
            BatchSpec::parse("5..=5").unwrap(),
            BatchSpec { min: 5, max: 5 }
        );
        assert!(BatchSpec::parse("0").is_err());
        assert!(BatchSpec::parse("0..3").is_err());
        assert!(BatchSpec::parse("9..3").is_err());
        assert!(BatchSpec::parse("a..b").is_err());
        assert!(BatchSpec::parse("").is_err());
        assert_eq!(BatchSpec::parse("10..100").unwrap().to_string(), "10..100");
    }

    #[test]
    fn bursts() {
        let b = Burst::parse("10x:5s/30s").unwrap();
        assert_eq!(b.factor, 10.0);
        assert_eq!(b.len, Duration::from_secs(5));
        assert_eq!(b.period, Duration::from_secs(30));
        let at = |s: f64| b.multiplier(Duration::from_secs_f64(s));
        assert_eq!(at(0.0), 1.0);
        assert_eq!(at(24.9), 1.0);
        assert_eq!(at(25.0), 10.0);
        assert_eq!(at(29.9), 10.0);
        assert_eq!(at(30.0), 1.0);
        assert_eq!(at(57.0), 10.0);
        assert_eq!(Burst::parse("2.5x:500ms/2s").unwrap().factor, 2.5);
        for bad in [
            "10:5s/30s",
            "10x5s/30s",
            "10x:5s",
            "10x:40s/30s",
            "0x:1s/2s",
            "x:1s/2s",
        ] {
            assert!(Burst::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slo_parse_and_evaluate() {
        let slo = Slo::parse("p99=1ms,p999=5ms, p99.99=20ms,max=100ms,errors=0").unwrap();
        assert_eq!(slo.bounds.len(), 5);
        assert_eq!(
            slo.bounds[1].1,
            Bound::Percentile {
                pct: 99.9,
                max_us: 5000.0
            }
        );
        assert_eq!(
            slo.bounds[2].1,
            Bound::Percentile {
                pct: 99.99,
                max_us: 20000.0
            }
        );
        // A distribution whose percentile p is p*10 microseconds.
        let pct = |p: f64| p * 10.0;
        let ok = SloInput {
            percentile_us: &pct,
            max_us: 2000.0,
            errors: 0,
        };
        assert!(slo.evaluate(ok).is_empty());
        let bad = SloInput {
            percentile_us: &|p: f64| if p >= 99.0 { 1500.0 } else { 10.0 },
            max_us: 200_000.0,
            errors: 3,
        };
        let failed = slo.evaluate(bad);
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert!(
            failed[0].starts_with("p99 = 1.50ms exceeds 1.00ms"),
            "{failed:?}"
        );
        assert!(failed[1].contains("max"), "{failed:?}");
        assert!(failed[2].contains("errors = 3"), "{failed:?}");
        assert_eq!(parse_percentile("50"), Some(50.0));
        assert_eq!(parse_percentile("9"), Some(9.0));
        for bad in [
            "p99",
            "p99=fast",
            "q99=1ms",
            "p0=1ms",
            "p101=1ms",
            "errors=some",
            "",
        ] {
            assert!(Slo::parse(bad).is_err(), "{bad}");
        }
    }
}
