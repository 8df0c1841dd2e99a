//! Taking a map out of the loaded object as the type it is used as, and
//! naming the map in the error of anything done with it: one way for the
//! kernel side's parts (`maps.rs`, `splice.rs`, `direct.rs`), each with an
//! error type of its own.

use aya::{
    Ebpf,
    maps::{Map, MapError},
};

/// An error type that says which map was missing or failed.
pub(super) trait MapFailure: Sized {
    fn missing(name: &'static str) -> Self;
    fn failed(name: &'static str, source: MapError) -> Self;

    /// The map `name` of `ebpf`, as `T`.
    fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Self>
    where
        T: TryFrom<Map, Error = MapError>,
    {
        ebpf.take_map(name)
            .ok_or_else(|| Self::missing(name))?
            .try_into()
            .map_err(|source| Self::failed(name, source))
    }

    /// The error of an operation on the map `name`.
    fn of_map(name: &'static str) -> impl Fn(MapError) -> Self {
        move |source| Self::failed(name, source)
    }
}
