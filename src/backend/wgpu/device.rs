//! The device context: adapter and device set-up, every pipeline built once,
//! buffers, the batched command encoder, per-dispatch uniforms, cached bind
//! groups and read-back.
//!
//! **Submission.** Dispatches are recorded into one command encoder (behind a
//! mutex), consecutive ones in one compute pass, and submitted only when data
//! is read back, when a host write must be ordered after pending work, or
//! every [`MAX_SLOTS`] dispatches. A training step is therefore a few
//! submissions whose only read-back is the loss scalar.
//!
//! **Buffers.** Plain allocations, zeroed by wgpu; the engine's `Workspace`
//! recycles them across steps, so no pool is kept here. Scratch space (im2col
//! columns, split-K partials, per-row losses) lives in [`Scratch`] and only
//! grows.
//!
//! **Uniforms (the uniform trap of DESIGN.md, Conventions).** `queue.write_buffer` runs before
//! the *next submit's* command buffers, so one uniform written twice before
//! a submit would give every dispatch the last value. Instead each dispatch
//! gets its own slot (aligned to `min_uniform_buffer_offset_alignment`) in a
//! host-side arena; the arena is uploaded with one `write_buffer` right before
//! the submit that uses it, and each dispatch binds its slot through a dynamic
//! offset. So bind groups do not depend on the parameters and are cached by
//! `(kernel, buffer ids)`; a dropped buffer evicts its bind groups.

use super::kernels::{families, Kernel, WG};
use crate::{Error, Result};
use bytemuck::Pod;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

/// Dispatches per submission (each owns one uniform slot).
pub(super) const MAX_SLOTS: usize = 64;
/// Copies and clears per submission.
const MAX_COMMANDS: usize = 256;
/// Bind groups kept before the cache is emptied (a safety net: drops evict).
const MAX_GROUPS: usize = 4096;
/// Largest workgroup count in one grid dimension (WebGPU's default limit).
pub(super) const MAX_DIM: u32 = 65535;
/// Storage buffers one dispatch may bind (the size of its bind-group cache
/// key; the kernel table's rows are checked against it).
pub(super) const MAX_BUFFERS: usize = 5;
/// Upper bound of one scratch buffer, in f32 elements (256 MiB).
const MAX_SCRATCH: usize = 1 << 26;

/// Lock a mutex, ignoring poisoning (a panicking test must not break the others).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `x` as a shader-side `u32`.
pub(super) fn u(x: usize) -> u32 {
    u32::try_from(x).unwrap_or_else(|_| panic!("wgpu backend: size {x} does not fit a u32 index"))
}

/// Buffer ids, and the ids of dropped buffers whose bind groups must go.
#[derive(Default)]
pub(super) struct Registry {
    next: AtomicU64,
    dead: Mutex<Vec<u64>>,
}

/// A device buffer (STORAGE | COPY_SRC | COPY_DST) of `len` 4-byte elements.
pub(super) struct RawBuf {
    pub(super) buffer: wgpu::Buffer,
    pub(super) len: usize,
    pub(super) id: u64,
    reg: Arc<Registry>,
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        lock(&self.reg.dead).push(self.id);
    }
}

/// The scratch buffers an op may need; an op holds the scratch lock for its
/// whole encoding so that concurrent callers cannot interleave on them.
#[derive(Clone, Copy, Debug)]
pub(super) enum Slot {
    /// im2col columns.
    Cols = 0,
    /// Split-K / per-image partial products.
    Parts = 1,
    /// Per-row losses and per-workgroup partial sums.
    Rows = 2,
}

#[derive(Default)]
pub(super) struct Scratch {
    bufs: [Option<RawBuf>; 3],
}

impl Scratch {
    /// Make `slot` hold at least `len` elements (grown to a power of two).
    pub(super) fn ensure(&mut self, ctx: &Ctx, slot: Slot, len: usize) {
        let b = &mut self.bufs[slot as usize];
        if b.as_ref().is_none_or(|b| b.len < len) {
            let cap = ctx.scratch_cap();
            let len = len.max(1024).next_power_of_two().min(cap).max(len);
            *b = Some(ctx.alloc(len, "lwf scratch"));
        }
    }
    pub(super) fn get(&self, slot: Slot) -> &RawBuf {
        self.bufs[slot as usize].as_ref().expect("scratch ensured before use")
    }
}

struct Pipe {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    params_size: u64,
    bindings: usize,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    kernel: Kernel,
    ids: [u64; MAX_BUFFERS],
}

/// Everything recorded but not yet submitted.
#[derive(Default)]
struct Pending {
    /// The open compute pass: consecutive dispatches share it (wgpu still
    /// places a barrier between dispatches that depend on each other). Ended
    /// before any copy or clear, and before a submit. Declared before the
    /// encoder so that it is dropped first.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    /// Uniform slots used (= dispatches recorded).
    slots: usize,
    commands: usize,
    /// The uniform arena of the recorded dispatches.
    params: Vec<u8>,
    /// Ids of buffers the recorded commands read or write.
    touched: HashSet<u64>,
    groups: HashMap<GroupKey, wgpu::BindGroup>,
    staging: Option<wgpu::Buffer>,
}

/// The device, shared by every clone of the backend.
pub(super) struct Ctx {
    pub(super) device: wgpu::Device,
    queue: wgpu::Queue,
    pub(super) info: wgpu::AdapterInfo,
    pub(super) limits: wgpu::Limits,
    pipes: Vec<Pipe>,
    uniform: wgpu::Buffer,
    slot_stride: usize,
    reg: Arc<Registry>,
    pending: Mutex<Pending>,
    pub(super) scratch: Mutex<Scratch>,
    /// Extra cap on scratch buffers, in elements (0: none); tests lower it to
    /// exercise the batch chunking of convolutions.
    pub(super) scratch_limit: AtomicUsize,
    /// Extra cap on any buffer, in bytes (0: none); tests lower it to reach
    /// the device-limit errors on a small model.
    pub(super) buffer_limit: AtomicU64,
    /// The first fault (a buffer over the device's limits, a lost device, an
    /// error wgpu reports outside a scope). The backend's methods cannot
    /// return errors, so from then on every operation is skipped (reads give
    /// zeros) and the verbs ask [`Ctx::fault`] before they save or report:
    /// the user gets one line and an exit code instead of a panic mid-step.
    fault: Arc<Mutex<Option<String>>>,
}

impl Ctx {
    pub(super) fn new() -> Result<Ctx> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| {
            Error::Device(format!(
                "no GPU adapter found (Vulkan): {e}; install mesa-vulkan-drivers, or use --backend cpu"
            ))
        })?;
        let info = adapter.get_info();
        let have = adapter.limits();
        // Defaults everywhere (portable), but the adapter's own buffer sizes:
        // big activations and im2col scratch need more than 128/256 MiB on a
        // real GPU.
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: have.max_storage_buffer_binding_size,
            max_buffer_size: have.max_buffer_size,
            ..wgpu::Limits::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("lwf-engine"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        }))
        .map_err(|e| Error::Device(format!("GPU adapter {} refused a device: {e}", info.name)))?;

        let pipes = build_pipelines(&device)?;
        let fault: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let (on_error, on_lost) = (fault.clone(), fault.clone());
        let adapter_name = info.name.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            record_fault(&on_error, format!("the GPU reported an error: {e}"));
        }));
        device.set_device_lost_callback(move |reason, msg| {
            record_fault(&on_lost, format!("the GPU device {adapter_name} was lost ({reason:?}): {msg}"));
        });
        let align = (limits.min_uniform_buffer_offset_alignment as usize).max(16);
        let biggest = Kernel::ALL.iter().map(|k| k.spec().params_size as usize).max().unwrap_or(16);
        let slot_stride = biggest.div_ceil(align) * align;
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("lwf uniforms"),
            size: (slot_stride * MAX_SLOTS) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Ctx {
            device,
            queue,
            info,
            limits,
            pipes,
            uniform,
            slot_stride,
            reg: Arc::new(Registry { next: AtomicU64::new(1), dead: Mutex::new(Vec::new()) }),
            pending: Mutex::new(Pending::default()),
            scratch: Mutex::new(Scratch::default()),
            scratch_limit: AtomicUsize::new(0),
            buffer_limit: AtomicU64::new(0),
            fault,
        })
    }

    /// The first fault, if any (see the field's note).
    pub(super) fn fault(&self) -> Option<String> {
        lock(&self.fault).clone()
    }

    /// Record a fault found outside this file (a device limit a kernel's
    /// caller meets); the first one is kept.
    pub(super) fn set_fault(&self, why: String) {
        record_fault(&self.fault, why);
    }

    fn faulted(&self) -> bool {
        lock(&self.fault).is_some()
    }

    /// The largest buffer and storage binding, in bytes (a test's cap applied).
    fn max_buffer(&self) -> u64 {
        match self.buffer_limit.load(Ordering::Relaxed) {
            0 => self.limits.max_buffer_size,
            cap => self.limits.max_buffer_size.min(cap),
        }
    }

    fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.max_buffer())
    }

    /// A buffer of `bytes` that the device cannot hold: record why and give
    /// back a placeholder (never used: every operation is skipped now).
    fn too_big(&self, bytes: u64, len: usize, what: &str) -> Option<RawBuf> {
        if bytes <= self.max_buffer() {
            return None;
        }
        record_fault(
            &self.fault,
            format!(
                "{what} of {bytes} bytes exceeds the GPU's largest buffer ({} bytes); \
                 use a smaller --batch-size or image size, or --backend cpu",
                self.max_buffer()
            ),
        );
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("lwf placeholder"),
            size: 4,
            usage: Self::usage(),
            mapped_at_creation: false,
        });
        Some(self.new_raw(buffer, len))
    }

    /// Largest scratch buffer, in elements.
    pub(super) fn scratch_cap(&self) -> usize {
        let bind = self.max_binding();
        let cap = ((bind / 4) as usize).min(MAX_SCRATCH);
        match self.scratch_limit.load(Ordering::Relaxed) {
            0 => cap,
            limit => cap.min(limit),
        }
    }

    fn new_raw(&self, buffer: wgpu::Buffer, len: usize) -> RawBuf {
        let id = self.reg.next.fetch_add(1, Ordering::Relaxed);
        RawBuf { buffer, len, id, reg: self.reg.clone() }
    }

    fn usage() -> wgpu::BufferUsages {
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
    }

    /// A zeroed buffer of `len` elements (wgpu zero-initialises new buffers).
    pub(super) fn alloc(&self, len: usize, label: &str) -> RawBuf {
        let size = (len.max(1) * 4) as u64;
        if let Some(placeholder) = self.too_big(size, len, "a buffer") {
            return placeholder;
        }
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: Self::usage(),
            mapped_at_creation: false,
        });
        self.new_raw(buffer, len)
    }

    /// A buffer holding `data` (written at creation: no ordering concerns).
    pub(super) fn alloc_init<T: Pod>(&self, data: &[T]) -> RawBuf {
        if data.is_empty() {
            return self.alloc(0, "lwf buffer");
        }
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if let Some(placeholder) = self.too_big(bytes.len() as u64, data.len(), "an upload") {
            return placeholder;
        }
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("lwf buffer"),
            size: bytes.len() as u64,
            usage: Self::usage(),
            mapped_at_creation: true,
        });
        {
            let mut view = buffer.slice(..).get_mapped_range_mut().expect("a buffer mapped at creation");
            view.copy_from_slice(bytes);
        }
        buffer.unmap();
        self.new_raw(buffer, data.len())
    }

    /// Overwrite the first elements of `dst`. `queue.write_buffer` lands before
    /// the next submission, so pending work that touches `dst` is submitted first.
    pub(super) fn write<T: Pod>(&self, dst: &RawBuf, data: &[T]) {
        assert!(data.len() <= dst.len, "write: {} elements into a buffer of {}", data.len(), dst.len);
        if data.is_empty() || self.faulted() {
            return;
        }
        let mut st = lock(&self.pending);
        if st.touched.contains(&dst.id) {
            self.flush(&mut st);
        }
        self.queue.write_buffer(&dst.buffer, 0, bytemuck::cast_slice(data));
    }

    /// Record `dst[dst_off..+len] = src[src_off..+len]` (elements).
    pub(super) fn copy(&self, dst: &RawBuf, dst_off: usize, src: &RawBuf, src_off: usize, len: usize) {
        assert!(
            dst_off + len <= dst.len && src_off + len <= src.len,
            "copy: {len} elements from offset {src_off} of {} into offset {dst_off} of {}",
            src.len,
            dst.len
        );
        if len == 0 || self.faulted() {
            return;
        }
        let mut st = lock(&self.pending);
        self.command_room(&mut st);
        st.touched.insert(dst.id);
        st.touched.insert(src.id);
        self.encoder(&mut st).copy_buffer_to_buffer(
            &src.buffer,
            (src_off * 4) as u64,
            &dst.buffer,
            (dst_off * 4) as u64,
            (len * 4) as u64,
        );
    }

    /// Record zeroing the whole buffer.
    pub(super) fn clear(&self, dst: &RawBuf) {
        if self.faulted() {
            return;
        }
        let mut st = lock(&self.pending);
        self.command_room(&mut st);
        st.touched.insert(dst.id);
        self.encoder(&mut st).clear_buffer(&dst.buffer, 0, None);
    }

    fn command_room(&self, st: &mut Pending) {
        if st.commands >= MAX_COMMANDS {
            self.flush(st);
        }
        st.commands += 1;
    }

    /// The encoder, for a copy or a clear: ends the open compute pass.
    fn encoder<'a>(&self, st: &'a mut Pending) -> &'a mut wgpu::CommandEncoder {
        st.pass = None;
        st.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("lwf step") })
        })
    }

    /// Submit everything recorded so far (uniform arena first).
    fn flush(&self, st: &mut Pending) {
        st.pass = None;
        if let Some(enc) = st.encoder.take() {
            if !st.params.is_empty() {
                self.queue.write_buffer(&self.uniform, 0, &st.params);
            }
            self.queue.submit([enc.finish()]);
        }
        st.params.clear();
        st.slots = 0;
        st.commands = 0;
        st.touched.clear();
    }

    /// Submit pending work (without waiting for it).
    pub(super) fn submit(&self) {
        let mut st = lock(&self.pending);
        self.flush(&mut st);
    }

    /// Drop the cached bind groups of buffers that were dropped.
    fn evict(&self, st: &mut Pending) {
        let dead = std::mem::take(&mut *lock(&self.reg.dead));
        if dead.is_empty() {
            return;
        }
        let dead: HashSet<u64> = dead.into_iter().collect();
        st.groups.retain(|k, _| !k.ids.iter().any(|id| dead.contains(id)));
    }

    /// Record one dispatch of `kernel` with its own uniform `params`, binding
    /// `bufs` (read-only inputs then outputs) and `groups` workgroups.
    pub(super) fn dispatch<P: Pod>(&self, kernel: Kernel, params: &P, bufs: &[&RawBuf], groups: [u32; 3]) {
        if groups.contains(&0) {
            return;
        }
        let pipe = &self.pipes[kernel as usize];
        assert_eq!(bufs.len(), pipe.bindings, "{kernel:?}: wrong number of buffers");
        assert_eq!(size_of::<P>() as u64, pipe.params_size, "{kernel:?}: wrong params type");
        if self.faulted() {
            return;
        }
        let max_dim = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max_dim) {
            let why = format!(
                "{kernel:?} needs a grid of {groups:?} workgroups, over the GPU's {max_dim} a dimension"
            );
            return record_fault(&self.fault, why);
        }
        if let Some(b) = bufs.iter().find(|b| b.buffer.size() > self.max_binding()) {
            let why = format!(
                "{kernel:?} binds a buffer of {} bytes, over the GPU's largest storage binding ({} bytes); \
                 use a smaller --batch-size or image size, or --backend cpu",
                b.buffer.size(),
                self.max_binding()
            );
            return record_fault(&self.fault, why);
        }
        let mut guard = lock(&self.pending);
        let st = &mut *guard;
        if st.slots >= MAX_SLOTS {
            self.flush(st);
        }
        self.evict(st);
        let offset = st.slots * self.slot_stride;
        st.slots += 1;
        st.params.resize(offset, 0);
        st.params.extend_from_slice(bytemuck::bytes_of(params));
        assert!(bufs.len() <= MAX_BUFFERS, "{kernel:?}: more than {MAX_BUFFERS} buffers");
        let mut ids = [0u64; MAX_BUFFERS];
        for (slot, b) in ids.iter_mut().zip(bufs) {
            *slot = b.id;
            st.touched.insert(b.id);
        }
        if st.groups.len() >= MAX_GROUPS {
            st.groups.clear();
        }
        let group = st.groups.entry(GroupKey { kernel, ids }).or_insert_with(|| {
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.uniform,
                    offset: 0,
                    size: NonZeroU64::new(pipe.params_size),
                }),
            }];
            for (i, b) in bufs.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: b.buffer.as_entire_binding(),
                });
            }
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.spec().entry),
                layout: &pipe.layout,
                entries: &entries,
            })
        });
        if st.pass.is_none() {
            let encoder = st.encoder.get_or_insert_with(|| {
                self.device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("lwf step") })
            });
            let desc = wgpu::ComputePassDescriptor { label: None, timestamp_writes: None };
            st.pass = Some(encoder.begin_compute_pass(&desc).forget_lifetime());
        }
        let pass = st.pass.as_mut().expect("a compute pass was just opened");
        pass.set_pipeline(&pipe.pipeline);
        pass.set_bind_group(0, &*group, &[offset as u32]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }

    /// Copy `src` to the host: submit pending work plus a copy into a mapped
    /// staging buffer, wait, read. The only place that waits for the GPU.
    pub(super) fn read(&self, src: &RawBuf) -> Vec<u8> {
        if src.len == 0 {
            return Vec::new();
        }
        if self.faulted() {
            return vec![0; src.len * 4];
        }
        let bytes = (src.len * 4) as u64;
        let mut guard = lock(&self.pending);
        let st = &mut *guard;
        if st.staging.as_ref().is_none_or(|s| s.size() < bytes) {
            st.staging = Some(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("lwf read-back"),
                size: bytes.next_power_of_two().max(256),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let staging = st.staging.clone().expect("just created");
        self.encoder(st).copy_buffer_to_buffer(&src.buffer, 0, &staging, 0, bytes);
        self.flush(st);
        let slice = staging.slice(..bytes);
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        let failed = match self.device.poll(wgpu::PollType::wait_indefinitely()) {
            Err(e) => Some(format!("waiting for the GPU failed: {e}")),
            Ok(_) => match rx.recv() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("reading back from the GPU failed: {e}")),
                Err(_) => Some("the GPU device was lost before a read-back completed".to_string()),
            },
        };
        if let Some(why) = failed {
            record_fault(&self.fault, why);
            return vec![0; src.len * 4];
        }
        let out = {
            let view = slice.get_mapped_range().expect("a mapped read-back buffer");
            view.to_vec()
        };
        staging.unmap();
        out
    }

    /// Grid for `groups` workgroups of a 1-D kernel: folded into y when x
    /// would exceed the per-dimension limit (the shader rebuilds the linear id).
    pub(super) fn grid(&self, groups: usize) -> [u32; 3] {
        let max = self.limits.max_compute_workgroups_per_dimension.min(MAX_DIM) as usize;
        if groups <= max {
            return [groups as u32, 1, 1];
        }
        let y = groups.div_ceil(max);
        let x = groups.div_ceil(y);
        assert!(y <= max, "wgpu backend: {groups} workgroups do not fit a 2-D grid");
        [x as u32, y as u32, 1]
    }

    /// Grid for one invocation per element of `n` elements.
    pub(super) fn grid_elems(&self, n: usize) -> [u32; 3] {
        self.grid(n.div_ceil(WG as usize))
    }
}

/// Keep the first fault: later ones are usually its consequences.
fn record_fault(fault: &Mutex<Option<String>>, why: String) {
    lock(fault).get_or_insert(why);
}

/// Compile every shader family and build one pipeline per entry point, each
/// family inside error scopes so that a WGSL error names its file.
fn build_pipelines(device: &wgpu::Device) -> Result<Vec<Pipe>> {
    let mut pipes: Vec<Option<Pipe>> = Kernel::ALL.iter().map(|_| None).collect();
    for (family, kernels) in families() {
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(family.file),
            source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(family.source)),
        });
        for k in kernels {
            let spec = k.spec();
            let (ro, rw) = (spec.inputs, spec.outputs);
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: NonZeroU64::new(spec.params_size),
                },
                count: None,
            }];
            for i in 0..ro + rw {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: i + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: i < ro },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(spec.entry),
                entries: &entries,
            });
            let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(spec.entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(spec.entry),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: Default::default(),
                cache: None,
            });
            pipes[k as usize] =
                Some(Pipe { pipeline, layout, params_size: spec.params_size, bindings: (ro + rw) as usize });
        }
        let v = pollster::block_on(validation.pop());
        let i = pollster::block_on(internal.pop());
        if let Some(e) = v.or(i) {
            // Past the file's last line, the error is in the appended helpers.
            let with = if family.common { " (+ shaders/common.wgsl)" } else { "" };
            return Err(Error::Device(format!("shaders/{}{with}: {e}", family.file)));
        }
    }
    Ok(pipes.into_iter().map(|p| p.expect("every kernel has a file")).collect())
}
