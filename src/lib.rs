//! lwf-engine: Learning without Forgetting (Li & Hoiem 2016) on a from-scratch
//! numeric engine — an autodiff tape, a CPU backend (rayon + matrixmultiply)
//! and a GPU backend of hand-written WGSL kernels (wgpu).
//!
//! Module map (see DESIGN.md):
//! - [`backend`]: the `Backend` trait (the op set) and its CPU and wgpu implementations
//! - [`tensor`], [`autodiff`]: tensors and the define-by-run tape
//! - [`nn`], [`optim`]: layers, the `Net` of a trunk plus heads, fused SGD
//! - [`data`]: IDX/NPY readers, class splits, seeded batching
//! - [`incremental`]: methods (lwf, finetune, …), protocols and the task loop
//! - [`metrics`], [`checkpoint`]: reports and safetensors checkpoints

pub mod app;
pub mod autodiff;
pub mod backend;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod fsio;
pub mod incremental;
pub mod interrupt;
pub mod loss;
pub mod metrics;
pub mod nn;
pub mod optim;
pub mod results;
pub mod rng;
pub mod tensor;

pub use backend::cpu::simd::SimdPath;
pub use backend::wgpu::WgpuBackend;
pub use backend::{Backend, CpuBackend};
pub use error::{Error, Result};
