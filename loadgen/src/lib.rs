//! loadgen: power-law traffic for featureproxy and, side by side, for Redis or any RESP proxy.
//!
//! * [`zipf`]: Zipf ranks by rejection-inversion; [`scramble`]: a seeded bijection from ranks to
//!   entity ids, so hot keys are scattered; [`keys`]: key names, the cold set and the value of
//!   each feature as a function of `(id, j)`.
//! * [`workload`]: the entities of each request, recomputable from `(connection, k)`.
//! * [`driver`]: the open/closed-loop engine, timed from intended send times.
//! * [`report`]: text, JSON and SVG output; [`spec`]: the command-line specs (durations, batch
//!   ranges, bursts, SLOs).
//! * [`server_cpu`]: the CPU time of the server processes over the measured window.
//! * [`seed`]: writes a view's rows through the proxy; [`selftest`]: echo servers that measure
//!   loadgen itself; [`floor`]: the cheapest server of the protocol, the cost floor.

pub mod driver;
pub mod floor;
pub mod keys;
pub mod report;
pub mod resp;
pub mod rng;
pub mod scramble;
pub mod seed;
pub mod selftest;
pub mod server_cpu;
pub mod spec;
pub mod workload;
pub mod zipf;
