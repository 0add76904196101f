//! Redis beneath the storage seam: the [`node`] (one server, its connection and breaker), the
//! backends built from nodes ([`standalone`]), client-side-caching notices of writes made behind
//! the proxy ([`tracking`]), and the private server a newcomer gets without `--redis` ([`child`]).

pub mod child;
pub mod node;
pub mod standalone;
pub mod tracking;
