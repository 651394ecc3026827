//! Training state, so a long `train` or `extend` survives an interruption.
//!
//! With `--checkpoint-every N`, every N epochs of every phase (warm-up, main)
//! the loop writes one file, atomically: every parameter, every momentum
//! buffer, the shuffling RNG's state, which phase and how many of its epochs
//! are done, and what run this is. `--resume FILE` replays the run up to that
//! phase (everything before training is deterministic: LwF's Y_o is recorded
//! again from the unchanged old model rather than stored), restores the saved
//! values there and continues, so on the CPU the result is bit for bit the
//! uninterrupted one.

use crate::backend::Backend;
use crate::checkpoint::{f32_from_bytes, f32_tensor, read_safetensors, write_safetensors, StoredTensor};
use crate::error::{Error, Result};
use crate::nn::Net;
use crate::optim::Sgd;
use crate::rng::Rng;
use crate::tensor::Tensor;
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const STATE_KEY: &str = "lwf_engine_state";
const STATE_FORMAT: &str = "lwf-engine-training-state/1";

/// The metadata of a state file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StateMeta {
    format: String,
    /// What run this is (verb, data, classes, method, seed, hyper-parameters):
    /// a resume must be the same run.
    run: serde_json::Value,
    phase: usize,
    epochs_done: usize,
    rng: [u64; 4],
    note: String,
}

/// Where a resumed run picks up.
pub struct ResumePoint {
    phase: usize,
    epochs_done: usize,
    rng: [u64; 4],
    params: HashMap<String, Vec<f32>>,
    momentum: HashMap<String, Vec<f32>>,
    path: PathBuf,
}

/// A training session's saving and resuming, owned by the `Trainer`.
pub struct Session {
    state_path: PathBuf,
    every: usize,
    run: serde_json::Value,
    resume: Option<ResumePoint>,
    phase: usize,
    /// (phase, epochs done) of the last state written.
    last: Option<(usize, usize)>,
}

/// What `run_epochs` should do with a phase.
pub enum PhaseStart {
    /// Train it from its first epoch.
    Fresh,
    /// The saved state is further on: skip this phase.
    Skip,
    /// Restored from the state: train from this epoch.
    From(usize),
}

impl Session {
    /// A session writing `state_path` every `every` epochs (0: never) for the
    /// run described by `run`; `resume` continues from a state file.
    pub fn new(
        state_path: PathBuf,
        every: usize,
        run: serde_json::Value,
        resume: Option<&Path>,
    ) -> Result<Self> {
        let resume = resume.map(|p| load(p, &run)).transpose()?;
        Ok(Session { state_path, every, run, resume, phase: 0, last: None })
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// Called at the start of each training phase: counts phases and, at the
    /// one the resume point names, restores parameters, momentum and RNG.
    pub fn start_phase<B: Backend>(
        &mut self,
        b: &B,
        net: &mut Net<B>,
        sgd: &mut Sgd<B>,
        rng: &mut Rng,
    ) -> Result<PhaseStart> {
        let phase = self.phase;
        self.phase += 1;
        let Some(r) = &self.resume else { return Ok(PhaseStart::Fresh) };
        if r.phase > phase {
            return Ok(PhaseStart::Skip);
        }
        let bad = |m: String| Error::checkpoint(&r.path, m);
        for p in net.params_mut() {
            let v = r
                .params
                .get(&p.name)
                .ok_or_else(|| bad(format!("no value for '{}': not this run's state", p.name)))?;
            if v.len() != p.value.numel() {
                return Err(bad(format!(
                    "'{}' has {} values, the model needs {}",
                    p.name,
                    v.len(),
                    p.value.numel()
                )));
            }
            p.value = Tensor::from_vec(b, p.value.shape.dims(), v);
        }
        let ids: HashMap<&str, usize> = net.params().iter().map(|p| (p.name.as_str(), p.id)).collect();
        for (name, v) in &r.momentum {
            let id = ids
                .get(name.as_str())
                .ok_or_else(|| bad(format!("momentum of unknown parameter '{name}'")))?;
            sgd.set_velocity(b, *id, v);
        }
        *rng = Rng::from_state(r.rng);
        let from = r.epochs_done;
        self.resume = None;
        Ok(PhaseStart::From(from))
    }

    /// After an epoch: write the state when it is due.
    pub fn end_epoch<B: Backend>(
        &mut self,
        b: &B,
        net: &Net<B>,
        sgd: &Sgd<B>,
        rng: &Rng,
        epochs_done: usize,
    ) -> Result<()> {
        if self.every == 0 || !epochs_done.is_multiple_of(self.every) {
            return Ok(());
        }
        let phase = self.phase - 1;
        let names: HashMap<usize, &str> = net.params().iter().map(|p| (p.id, p.name.as_str())).collect();
        let mut tensors: Vec<StoredTensor> = net
            .params()
            .iter()
            .map(|p| {
                f32_tensor(format!("param.{}", p.name), p.value.shape.dims().to_vec(), &p.value.to_vec(b))
            })
            .collect();
        for (id, v) in sgd.velocities(b) {
            if let Some(name) = names.get(&id) {
                tensors.push(f32_tensor(format!("momentum.{name}"), vec![v.len()], &v));
            }
        }
        let meta = StateMeta {
            format: STATE_FORMAT.into(),
            run: self.run.clone(),
            phase,
            epochs_done,
            rng: rng.state(),
            note: "LwF's recorded outputs are not stored: a resume records them again from the old model"
                .into(),
        };
        let path = &self.state_path;
        let json = serde_json::to_string(&meta).map_err(|e| Error::checkpoint(path, e.to_string()))?;
        write_safetensors(path, &tensors, STATE_KEY, json)?;
        self.last = Some((phase, epochs_done));
        Ok(())
    }

    /// What an interruption message says about the saved state.
    pub fn saved_text(&self) -> String {
        match self.last {
            Some((phase, epoch)) => {
                let p = self.state_path.display();
                format!(
                    "the training state after epoch {epoch} of phase {} is in {p}: continue with the same flags and --resume {p}",
                    phase + 1
                )
            }
            None => "no training state was written (use --checkpoint-every N to make runs resumable)".into(),
        }
    }
}

/// Read a state file and check that it belongs to `run`.
fn load(path: &Path, run: &serde_json::Value) -> Result<ResumePoint> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: String| Error::checkpoint(path, m);
    let (st, json) = read_safetensors(path, &data, STATE_KEY, "training-state file")?;
    let meta: StateMeta = serde_json::from_str(&json).map_err(|e| bad(format!("bad metadata ({e})")))?;
    if meta.format != STATE_FORMAT {
        return Err(bad(format!("state format '{}' is not supported", meta.format)));
    }
    if &meta.run != run {
        return Err(bad(format!(
            "this state belongs to another run ({}); resume with the flags it was started with",
            meta.run
        )));
    }
    let mut params = HashMap::new();
    let mut momentum = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("tensor '{name}' is {:?}, expected F32", view.dtype())));
        }
        let v = f32_from_bytes(view.data());
        if let Some(n) = name.strip_prefix("param.") {
            params.insert(n.to_string(), v);
        } else if let Some(n) = name.strip_prefix("momentum.") {
            momentum.insert(n.to_string(), v);
        } else {
            return Err(bad(format!("unexpected tensor '{name}'")));
        }
    }
    Ok(ResumePoint {
        phase: meta.phase,
        epochs_done: meta.epochs_done,
        rng: meta.rng,
        params,
        momentum,
        path: path.to_path_buf(),
    })
}
