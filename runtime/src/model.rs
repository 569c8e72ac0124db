//! A compiled model ready to run, whatever produced its kernels (Cranelift JIT or rustc
//! through the `resnet!` macro): kernel calls, packed weights, a thread pool and a cache of
//! arenas so that a forward call allocates nothing once warm (unless timed, or with more
//! than 16 threads, see `Pool::split`).

use crate::exec::{self, Aligned, Call, Sizes};
use crate::pool::Pool;
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use std::sync::Mutex;

/// A model's packed weight blob: built at load time (`Owned`), or compiled into the
/// executable (the AOT object's data, the Rust executable's embedded blob) and used in
/// place (`Static`) or copied into huge pages (`Owned`, [`Weights::from_embedded`]).
pub enum Weights {
    Owned(Aligned),
    Static(&'static [f32]),
}

impl Weights {
    /// Uses `blob` in place when it is 64-byte aligned (as resnetc lays out embedded
    /// blobs), else copies it into an aligned buffer.
    pub fn from_static(blob: &'static [f32]) -> Result<Weights> {
        Ok(if (blob.as_ptr() as usize).is_multiple_of(64) {
            Weights::Static(blob)
        } else {
            Weights::Owned(Aligned::from_slice(blob)?)
        })
    }

    /// A blob embedded in the executable (the Rust executable's, the AOT object's). For a
    /// process that makes `many_calls`, copied into huge pages where the system offers
    /// them ([`crate::hugepages`]), dropping the blob's own resident pages behind the copy:
    /// ResNet-50's 120 MB took 30-340 ms to copy on a 2-vCPU Xeon VM, for forward calls
    /// 4-7% faster there (1 thread). Else as [`Weights::from_static`].
    ///
    /// # Safety
    /// `blob` must be read-only, file-backed memory (data of the executable's file).
    pub unsafe fn from_embedded(blob: &'static [f32], many_calls: bool) -> Result<Weights> {
        if many_calls && crate::hugepages::wanted(std::mem::size_of_val(blob)) {
            // SAFETY: forwarded from the caller.
            Ok(Weights::Owned(unsafe { Aligned::from_embedded(blob)? }))
        } else {
            Weights::from_static(blob)
        }
    }

    pub fn as_slice(&self) -> &[f32] {
        match self {
            Weights::Owned(a) => a.as_slice(),
            Weights::Static(s) => s,
        }
    }
}

pub struct Model {
    pub name: String,
    /// `[C, H, W]` of one input image.
    pub input: [usize; 3],
    pub classes: usize,
    calls: Vec<Call>,
    weights: Weights,
    sizes: Sizes,
    pool: Pool,
    /// Arenas of finished calls, reused by the next ones (one per concurrent caller).
    arenas: Mutex<Vec<Aligned>>,
}

impl Model {
    /// # Safety
    /// `calls` must be kernels generated for exactly these sizes and this weight blob.
    pub unsafe fn new(
        name: &str,
        input: [usize; 3],
        classes: usize,
        calls: Vec<Call>,
        weights: Weights,
        arena_floats: usize,
        threads: usize,
    ) -> Result<Model> {
        let sizes = Sizes { arena_floats, input_floats: input.iter().product(), output_floats: classes };
        Ok(Model {
            name: name.to_string(),
            input,
            classes,
            calls,
            weights,
            sizes,
            pool: Pool::new(threads),
            arenas: Mutex::new(Vec::new()),
        })
    }

    /// Uses `threads` threads (the caller and `threads - 1` workers) from now on.
    pub fn set_threads(&mut self, threads: usize) {
        self.pool = Pool::new(threads.max(1));
    }

    /// Kernel calls per image.
    pub fn num_calls(&self) -> usize {
        self.calls.len()
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Runs a batch `[N, C, H, W]`, returning logits `[N, classes]`.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        // The values are checked by `forward_into`.
        let n = crate::check::batch_size(input, self.input)?;
        let mut out = vec![0.0f32; n * self.classes];
        self.forward_into(input.data(), &mut out, n)?;
        Ok(Tensor::new(vec![n, self.classes], out))
    }

    /// Runs `n` images from `input` into `output`. Refuses non-finite inputs
    /// ([`crate::check::check_finite_input`]).
    pub fn forward_into(&self, input: &[f32], output: &mut [f32], n: usize) -> Result<()> {
        self.forward_timed(input, output, n, None)
    }

    /// [`forward_into`](Self::forward_into), adding each call's seconds to `timings`.
    pub fn forward_timed(
        &self,
        input: &[f32],
        output: &mut [f32],
        n: usize,
        timings: Option<&mut [f64]>,
    ) -> Result<()> {
        if n == 0 || input.len() != n * self.sizes.input_floats || output.len() != n * self.sizes.output_floats {
            bail!(
                "forward: buffers of {} input and {} output floats do not hold {n} images",
                input.len(),
                output.len()
            );
        }
        crate::check::check_finite_input(input, self.input)?;
        let need = n * self.sizes.arena_floats;
        let cached = self.arenas.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut arena = match cached {
            Some(a) if a.len() >= need => a,
            _ => Aligned::zeroed(need)?,
        };
        // SAFETY: the kernels were generated for these sizes (constructor's contract).
        unsafe {
            exec::run(
                &self.calls,
                self.sizes,
                self.weights.as_slice(),
                &mut arena,
                input,
                output,
                n,
                &self.pool,
                timings,
            )
        };
        self.arenas.lock().unwrap_or_else(|e| e.into_inner()).push(arena);
        Ok(())
    }
}

/// Everything the Rust backend generates about a model besides its kernels.
pub struct ModelDef {
    pub name: &'static str,
    pub input: [usize; 3],
    pub classes: usize,
    pub arena_floats: usize,
    pub weight_floats: usize,
    /// Tensors the weights file must hold: torchvision name and shape.
    pub expected: &'static [(&'static str, &'static [usize])],
    pub recipes: &'static [crate::pack::Recipe],
    /// Per call: kernel index, tasks per image, batch order, arguments.
    pub calls: &'static [(usize, usize, crate::exec::Order, &'static [crate::exec::Arg])],
}

impl Model {
    /// Packs `tensors` and assembles the model from generated parts.
    ///
    /// # Safety
    /// `kernels` must be the kernels generated together with `def`.
    pub unsafe fn from_def(
        def: &ModelDef,
        kernels: &[crate::exec::KernelFn],
        tensors: &crate::safetensors::Tensors,
        threads: usize,
    ) -> Result<Model> {
        crate::check::check_tensors(def.expected, tensors)?;
        let blob = crate::pack::build_blob(def.recipes, def.weight_floats, tensors)?;
        // SAFETY: forwarded from the caller; the blob was packed by `def`'s recipes.
        unsafe { Model::from_def_packed(def, kernels, Weights::Owned(blob), threads) }
    }

    /// [`from_def`](Self::from_def), taking the tensors and freeing each once packed (see
    /// [`crate::pack::build_blob_consuming`]).
    ///
    /// # Safety
    /// `kernels` must be the kernels generated together with `def`.
    pub unsafe fn from_def_consuming(
        def: &ModelDef,
        kernels: &[crate::exec::KernelFn],
        tensors: crate::safetensors::Tensors,
        threads: usize,
    ) -> Result<Model> {
        crate::check::check_tensors(def.expected, &tensors)?;
        let blob = crate::pack::build_blob_consuming(def.recipes, def.weight_floats, tensors)?;
        // SAFETY: forwarded from the caller; the blob was packed by `def`'s recipes.
        unsafe { Model::from_def_packed(def, kernels, Weights::Owned(blob), threads) }
    }

    /// Assembles the model from generated parts and a blob packed by `def`'s recipes
    /// (`resnetc build --backend rust` packs at build time and embeds the blob).
    ///
    /// # Safety
    /// `kernels` must be the kernels generated together with `def`, and `weights` a blob
    /// packed by `def.recipes`.
    pub unsafe fn from_def_packed(
        def: &ModelDef,
        kernels: &[crate::exec::KernelFn],
        weights: Weights,
        threads: usize,
    ) -> Result<Model> {
        if weights.as_slice().len() != def.weight_floats {
            bail!(
                "{}: packed weights hold {} floats, the model needs {}",
                def.name,
                weights.as_slice().len(),
                def.weight_floats
            );
        }
        let calls = def
            .calls
            .iter()
            .map(|&(k, tasks, order, args)| Call { f: kernels[k], args: args.to_vec(), tasks, order })
            .collect();
        // SAFETY: forwarded from the caller.
        unsafe { Model::new(def.name, def.input, def.classes, calls, weights, def.arena_floats, threads) }
    }
}
