//! The contract versions this host runs, side by side: a linked component, its instance and its
//! calls, each an enum over the versions, so the rest of the crate is written once. Each
//! version's bindings and conversions are in its own module (`v0_1`, `v0_2`).

use std::time::Instant;

use wasmtime::{Engine, Store};

use crate::sandbox::State;
use crate::{v0_1, v0_2, BackupEntry, BackupOutcome, BackupSchedule, Event, HttpResponse, NameInfo, Notification, PolicyConfig, Status, Target};

/// A linked component of one of the contract versions, ready to instantiate.
pub(crate) enum Pre {
    V01(v0_1::WorldPre<State>),
    V02(v0_2::WorldPre<State>),
}

/// An instance's exports, of the version its component implements.
pub(crate) enum World {
    V01(v0_1::World),
    V02(v0_2::World),
}

impl Pre {
    pub(crate) fn engine(&self) -> &Engine {
        match self {
            Pre::V01(p) => p.engine(),
            Pre::V02(p) => p.engine(),
        }
    }

    pub(crate) async fn instantiate_async(&self, store: &mut Store<State>) -> wasmtime::Result<World> {
        Ok(match self {
            Pre::V01(p) => World::V01(p.instantiate_async(store).await?),
            Pre::V02(p) => World::V02(p.instantiate_async(store).await?),
        })
    }
}

/// The calls of one instance, whichever version: the host's types in, the host's types out.
pub(crate) enum Calls<'a> {
    V01(v0_1::Calls<'a>),
    V02(v0_2::Calls<'a>),
}

impl Calls<'_> {
    pub(crate) fn new(world: &World, deadline: Instant) -> Calls<'_> {
        match world {
            World::V01(w) => Calls::V01(v0_1::Calls::new(w, deadline)),
            World::V02(w) => Calls::V02(v0_2::Calls::new(w, deadline)),
        }
    }

    pub(crate) fn schedule(&self, store: &mut Store<State>, c: &PolicyConfig) -> wasmtime::Result<BackupSchedule> {
        match self {
            Calls::V01(x) => x.schedule(store, c),
            Calls::V02(x) => x.schedule(store, c),
        }
    }

    pub(crate) fn name_file(&self, store: &mut Store<State>, c: &PolicyConfig, file: &NameInfo) -> wasmtime::Result<String> {
        match self {
            Calls::V01(x) => x.name_file(store, c, file),
            Calls::V02(x) => x.name_file(store, c, file),
        }
    }

    pub(crate) fn parse_name(&self, store: &mut Store<State>, c: &PolicyConfig, name: &str) -> wasmtime::Result<Option<NameInfo>> {
        match self {
            Calls::V01(x) => x.parse_name(store, c, name),
            Calls::V02(x) => x.parse_name(store, c, name),
        }
    }

    pub(crate) fn select_expired(
        &self,
        store: &mut Store<State>,
        backups: &[BackupEntry],
        ours: &[(BackupEntry, NameInfo)],
        now: i64,
        t: Target,
        c: &PolicyConfig,
    ) -> wasmtime::Result<Vec<(String, Option<String>)>> {
        match self {
            Calls::V01(x) => x.select_expired(store, backups, ours, now, t, c),
            Calls::V02(x) => x.select_expired(store, ours, now, t, c),
        }
    }

    pub(crate) fn shape_backup_response(&self, store: &mut Store<State>, o: &BackupOutcome) -> wasmtime::Result<HttpResponse> {
        match self {
            Calls::V01(x) => x.shape_backup_response(store, o),
            Calls::V02(x) => x.shape_backup_response(store, o),
        }
    }

    pub(crate) fn shape_status(&self, store: &mut Store<State>, s: &Status) -> wasmtime::Result<HttpResponse> {
        match self {
            Calls::V01(x) => x.shape_status(store, s),
            Calls::V02(x) => x.shape_status(store, s),
        }
    }

    /// None from a 0.1.0 policy, which cannot shape notifications.
    pub(crate) fn shape_notification(
        &self,
        store: &mut Store<State>,
        c: &PolicyConfig,
        now: i64,
        e: &Event,
    ) -> wasmtime::Result<Option<Vec<Notification>>> {
        match self {
            Calls::V01(_) => Ok(None),
            Calls::V02(x) => x.shape_notification(store, c, now, e).map(Some),
        }
    }

    /// None from a 0.1.0 policy, which cannot choose drills.
    pub(crate) fn select_drill(
        &self,
        store: &mut Store<State>,
        c: &PolicyConfig,
        now: i64,
        ours: &[(BackupEntry, NameInfo)],
    ) -> wasmtime::Result<Option<Vec<String>>> {
        match self {
            Calls::V01(_) => Ok(None),
            Calls::V02(x) => x.select_drill(store, c, now, ours).map(Some),
        }
    }
}

/// One instance of the policy, with the deadline of the whole policy call.
pub(crate) struct Instance {
    pub(crate) exports: World,
    pub(crate) deadline: Instant,
}

impl Instance {
    pub(crate) fn calls(&self) -> Calls<'_> {
        Calls::new(&self.exports, self.deadline)
    }
}
