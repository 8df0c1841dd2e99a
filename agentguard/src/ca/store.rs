//! The CA the running daemon signs with, switched in place by a rotation
//! step ([`super::rotation`]): every leaf cache reads it at each miss and
//! drops the leaves another CA signed ([`super::LeafCache`]).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use arc_swap::ArcSwap;
use time::{Duration, OffsetDateTime};
use tracing::warn;

use super::{
    CaError, LocalCa,
    authority::CA_DIR,
    rotation::{self, CaInfo, Step},
};

/// The daemon warns at start when the signing CA expires sooner than this:
/// time to stage a new one and restart the agents before activating it.
pub const EXPIRY_WARNING: Duration = Duration::days(90);

pub struct CaStore {
    state_dir: PathBuf,
    current: ArcSwap<LocalCa>,
    /// One step at a time: two admin requests must not interleave renames.
    changing: Mutex<()>,
}

impl std::fmt::Debug for CaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaStore")
            .field("current", &self.current.load())
            .finish_non_exhaustive()
    }
}

impl CaStore {
    /// The CA of `state_dir`, created on first start ([`LocalCa::load_or_create`]).
    pub fn load_or_create(state_dir: &Path) -> Result<Self, CaError> {
        let ca = LocalCa::load_or_create(state_dir)?;
        warn_if_expiring(&ca);
        Ok(Self::new(state_dir, ca))
    }

    /// A store holding `ca`, which was read from `state_dir`.
    pub fn new(state_dir: &Path, ca: LocalCa) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            current: ArcSwap::from_pointee(ca),
            changing: Mutex::new(()),
        }
    }

    /// The CA that signs now.
    pub fn current(&self) -> Arc<LocalCa> {
        self.current.load_full()
    }

    /// Carries out `step`, switches to the CA on disk and rewrites the
    /// trust bundle; returns the CAs trusted afterwards. A step refused
    /// changes nothing (see [`rotation`]). Should the folder not read back
    /// after a step that was carried out (not expected: every step leaves
    /// a CA that loads), the error says why, the files stay as the step
    /// left them, and the CA in use stays the one before.
    pub fn apply(&self, step: Step) -> Result<Vec<CaInfo>, CaError> {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = self.state_dir.join(CA_DIR);
        match step {
            Step::Rotate => rotation::stage(&dir)?,
            Step::Activate => rotation::activate(&dir, &self.current().bundle_path())?,
            Step::Cancel => rotation::cancel(&dir)?,
        }
        let ca = Arc::new(LocalCa::load(&self.state_dir)?);
        // Switched before the bundle is rewritten: after an activation the
        // bundle on disk holds both CAs until the rewrite drops the old one,
        // so at no moment does the proxy sign with a CA it lacks.
        self.current.store(ca.clone());
        ca.write_trust_bundle()?;
        Ok(ca.describe())
    }
}

fn warn_if_expiring(ca: &LocalCa) {
    let Some(not_after) = ca.not_after() else {
        return;
    };
    let left = not_after - OffsetDateTime::now_utc();
    if left < EXPIRY_WARNING {
        warn!(
            cert = %ca.cert_path().display(),
            days_left = left.whole_days(),
            "the local CA expires soon: stage a new one with `agentguard ca rotate`, restart the agents, then `agentguard ca activate`"
        );
    }
}
