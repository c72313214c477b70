//! The two file formats of `torch.save`.
//!
//! * The zip format (PyTorch >= 1.6): a zip archive whose entries share one top-level folder
//!   `<name>/`: `data.pkl` (the object, pickled; tensors refer to their storages by
//!   persistent id), `data/<key>` (the raw little-endian bytes of each storage), `byteorder`
//!   and `version`.
//! * The legacy format (PyTorch <= 1.5, and `_use_new_zipfile_serialization=False`): one
//!   stream of pickles — a magic number, the protocol version 1001, a `sys_info` dict, the
//!   object, the sorted list of storage keys — followed, for each key in that order, by the
//!   storage's element count (8 bytes, little-endian) and its raw bytes.
//!
//! In both, a tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
//! requires_grad, backward_hooks[, metadata])` (or the older `_rebuild_tensor(storage,
//! offset, size, stride)`), and its storage the persistent id `('storage', storage_type, key,
//! location, numel[, view_metadata])`. Every size, stride and offset is checked against the
//! bytes actually present before libtorch is asked for anything.

use super::pickle::{self, short_repr, Id, Limits, Object, Pickle};
use super::StateDict;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::HashMap;
use std::io::{Cursor, Read, Seek, Write};
use tch::{Device, Kind, Tensor};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

/// What the first bytes of a checkpoint say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PyTorch's zip format (torch >= 1.6).
    Zip,
    /// PyTorch's legacy pickle stream (torch <= 1.5).
    Legacy,
    /// Hugging Face safetensors.
    Safetensors,
    /// The tar format of PyTorch before 0.1.10.
    Tar,
    Empty,
    Unknown,
}

/// The magic number that starts a legacy checkpoint.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The only legacy protocol version there is.
const LEGACY_PROTOCOL: i128 = 1001;
/// The size limit of `data.pkl` in a zip checkpoint.
const MAX_PICKLE_BYTES: u64 = 1 << 30;
/// Most dimensions a tensor may have (PyTorch's own limit).
const MAX_DIMS: usize = 64;
/// A view whose elements overlap (a stride of 0, say) may expand its storage when made
/// contiguous; up to this many bytes.
const MAX_EXPANDED_BYTES: u64 = 1 << 30;
/// The entries of a checkpoint dict that hold the state dict, in order of preference.
const WRAPPER_KEYS: [&str; 3] = ["state_dict", "model_state_dict", "model"];

/// Guesses the format of a checkpoint from its first bytes.
pub fn detect(bytes: &[u8]) -> Format {
    if bytes.is_empty() {
        return Format::Empty;
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Format::Zip;
    }
    // Protocol 2+ pickles start with PROTO; protocols 0 and 1 with the magic number as text.
    if bytes[0] == 0x80 || bytes.starts_with(b"L119547037146038801333356") {
        return Format::Legacy;
    }
    if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        return Format::Tar;
    }
    if bytes.len() > 9 {
        let header = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if header >= 2 && header <= (bytes.len() - 8) as u64 && bytes[8] == b'{' {
            return Format::Safetensors;
        }
    }
    Format::Unknown
}

/// Reads a checkpoint in either PyTorch format from its bytes. Safetensors files and
/// anything else are refused (see `weights::load` for those). Errors do not name a file: the
/// caller adds it.
pub fn read(bytes: &[u8]) -> Result<StateDict> {
    if cfg!(target_endian = "big") {
        bail!("reading PyTorch checkpoints needs a little-endian machine");
    }
    match detect(bytes) {
        Format::Zip => read_zip(bytes),
        Format::Legacy => read_legacy(bytes),
        Format::Empty => bail!("empty file (0 bytes): not a checkpoint"),
        Format::Tar => bail!(
            "PyTorch tar checkpoint (written by PyTorch < 0.1.10): unsupported format, \
             re-save it with a recent PyTorch"
        ),
        Format::Safetensors => bail!("safetensors file: not a PyTorch checkpoint"),
        Format::Unknown => {
            bail!("not a PyTorch or safetensors checkpoint (unrecognised format; first bytes {})", first_bytes(bytes))
        }
    }
}

/// The first bytes of a file for messages: as text when they are printable ASCII, in
/// hexadecimal otherwise.
fn first_bytes(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(16)];
    if head.iter().all(|&b| b.is_ascii_graphic() || b == b' ') {
        format!("{:?}", String::from_utf8_lossy(head))
    } else {
        head.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
    }
}

// --- what the pickle describes -----------------------------------------------------------

/// A storage as a persistent id describes it.
#[derive(Debug, Clone, PartialEq)]
struct StorageRef {
    /// The key of the root storage (the data record's name).
    key: String,
    kind: Kind,
    /// Elements of the root storage, as declared.
    numel: u64,
    /// For a legacy storage view: its first element in the root storage and its length.
    view: Option<(u64, u64)>,
}

/// A tensor to build: a strided view of a storage.
#[derive(Debug, Clone)]
struct TensorSpec {
    storage: StorageRef,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// The element type of a storage class (`torch.FloatStorage` ...).
fn storage_kind(module: &str, name: &str) -> Option<Kind> {
    if module != "torch" && module != "torch.cuda" {
        return None;
    }
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" | "UntypedStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        "ComplexFloatStorage" => Kind::ComplexFloat,
        "ComplexDoubleStorage" => Kind::ComplexDouble,
        _ => return None,
    })
}

/// The storage class that holds `kind` (for the writer).
fn storage_class(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Float => "FloatStorage",
        Kind::Double => "DoubleStorage",
        Kind::Half => "HalfStorage",
        Kind::BFloat16 => "BFloat16Storage",
        Kind::Int64 => "LongStorage",
        Kind::Int => "IntStorage",
        Kind::Int16 => "ShortStorage",
        Kind::Int8 => "CharStorage",
        Kind::Uint8 => "ByteStorage",
        Kind::Bool => "BoolStorage",
        Kind::ComplexFloat => "ComplexFloatStorage",
        Kind::ComplexDouble => "ComplexDoubleStorage",
        _ => return None,
    })
}

fn non_negative(pk: &Pickle, id: Id, what: &str) -> Result<u64> {
    match pk.as_int(id) {
        Some(i) if i >= 0 => u64::try_from(i).map_err(|_| anyhow!("{what} {i} is too large")),
        Some(i) => bail!("negative {what} {i}"),
        None => bail!("{what} is {}, not an integer", pk.describe(id)),
    }
}

/// Parses `('storage', storage_type, key, location, numel[, view_metadata])`.
fn storage_ref(pk: &Pickle, pid: Id) -> Result<StorageRef> {
    let Some(items) = pk.as_seq(pid) else {
        bail!("unsupported persistent id: {}", pk.describe(pid));
    };
    let typename = items.first().and_then(|&i| pk.as_str(i));
    if typename != Some("storage") {
        bail!("unsupported persistent id of type {}", typename.map_or("?".into(), short_repr));
    }
    ensure!(items.len() >= 5, "storage persistent id with {} items, expected 5 or 6", items.len());
    let kind = match pk.as_global(items[1]) {
        Some((m, n)) => storage_kind(m, n).ok_or_else(|| anyhow!("unsupported storage type {m}.{n}"))?,
        None => bail!("storage type is {}, not a class", pk.describe(items[1])),
    };
    let key = match (pk.as_str(items[2]), pk.as_int(items[2])) {
        (Some(s), _) => s.to_string(),
        (None, Some(i)) => i.to_string(),
        _ => bail!("storage key is {}", pk.describe(items[2])),
    };
    let numel = non_negative(pk, items[4], "storage size")?;
    let view = match items.get(5) {
        Some(&v) if !matches!(pk.get(v), Object::None) => {
            let parts = pk
                .as_seq(v)
                .filter(|p| p.len() == 3)
                .ok_or_else(|| anyhow!("storage view metadata is {}, not a 3-tuple", pk.describe(v)))?;
            let offset = non_negative(pk, parts[1], "storage view offset")?;
            let len = non_negative(pk, parts[2], "storage view size")?;
            ensure!(
                offset.checked_add(len).is_some_and(|end| end <= numel),
                "storage view [{offset}, {offset}+{len}) outside storage {key} of {numel} elements"
            );
            Some((offset, len))
        }
        _ => None,
    };
    Ok(StorageRef { key, kind, numel, view })
}

/// A tuple of integers (a size or a stride); `torch.Size(...)` is accepted too.
fn int_tuple(pk: &Pickle, id: Id, what: &str) -> Result<Vec<i64>> {
    let items = match pk.get(id) {
        Object::Call(call) if pk.as_global(call.callable) == Some(("torch", "Size")) => {
            pk.as_seq(call.args).and_then(|a| a.first()).and_then(|&t| pk.as_seq(t))
        }
        _ => pk.as_seq(id),
    };
    let items = items.ok_or_else(|| anyhow!("tensor {what} is {}", pk.describe(id)))?;
    ensure!(items.len() <= MAX_DIMS, "tensor {what} has {} dimensions", items.len());
    items
        .iter()
        .map(|&i| match pk.as_int(i) {
            Some(v) if v >= 0 && v <= i128::from(i64::MAX) => Ok(v as i64),
            Some(v) => bail!("tensor {what} holds {v}"),
            None => bail!("tensor {what} holds {}", pk.describe(i)),
        })
        .collect()
}

/// Whether `id` looks like a tensor (made by one of PyTorch's rebuild functions).
fn is_tensor_like(pk: &Pickle, id: Id) -> bool {
    match pk.get(id) {
        Object::Call(call) => matches!(
            pk.as_global(call.callable),
            Some(("torch._utils" | "torch._tensor", name)) if name.starts_with("_rebuild")
        ),
        _ => false,
    }
}

/// The tensor `id` describes; `None` if it is not a tensor at all.
fn tensor_spec(pk: &Pickle, id: Id) -> Result<Option<TensorSpec>> {
    match pk.get(id) {
        Object::Call(call) => match pk.as_seq(call.args) {
            Some(args) => rebuild_call(pk, call.callable, args, 0),
            None => Ok(None),
        },
        _ => Ok(None),
    }
}

fn rebuild_call(pk: &Pickle, func: Id, args: &[Id], depth: usize) -> Result<Option<TensorSpec>> {
    let Some((module, name)) = pk.as_global(func) else {
        return Ok(None);
    };
    ensure!(depth < 4, "tensor nested too deeply");
    let arg =
        |i: usize| args.get(i).copied().ok_or_else(|| anyhow!("{module}.{name} called with {} arguments", args.len()));
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let storage = arg(0)?;
            let Object::Persistent(pid) = pk.get(storage) else {
                bail!("tensor storage is {}, not a persistent storage", pk.describe(storage));
            };
            let storage = storage_ref(pk, *pid)?;
            let offset = non_negative(pk, arg(1)?, "storage offset")?;
            let offset = i64::try_from(offset).map_err(|_| anyhow!("storage offset too large"))?;
            let size = int_tuple(pk, arg(2)?, "size")?;
            let stride = int_tuple(pk, arg(3)?, "stride")?;
            ensure!(
                size.len() == stride.len(),
                "tensor size has {} dimensions but stride {}",
                size.len(),
                stride.len()
            );
            Ok(Some(TensorSpec { storage, offset, size, stride }))
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            let data = arg(0)?;
            match pk.get(data) {
                Object::Call(call) => {
                    let inner = pk.as_seq(call.args).unwrap_or(&[]);
                    rebuild_call(pk, call.callable, inner, depth + 1)?
                        .map(Some)
                        .ok_or_else(|| anyhow!("parameter data is {}", pk.describe(data)))
                }
                _ => bail!("parameter data is {}", pk.describe(data)),
            }
        }
        // `_rebuild_from_type_v2(func, type, args, state)`: a tensor subclass or a tensor
        // with Python attributes. The type and the attributes are dropped.
        ("torch._tensor", "_rebuild_from_type_v2" | "_rebuild_from_type") => {
            let inner = pk.as_seq(arg(2)?).unwrap_or(&[]);
            rebuild_call(pk, arg(0)?, inner, depth + 1)?
                .map(Some)
                .ok_or_else(|| anyhow!("{module}.{name} of something that is not a tensor"))
        }
        ("torch._utils" | "torch._tensor", other) if other.starts_with("_rebuild") => {
            bail!("unsupported kind of tensor ({module}.{name}: sparse, quantized, nested or meta)")
        }
        _ => Ok(None),
    }
}

/// Names that may hold something else than a tensor in a state dict.
fn is_known_metadata(name: &str) -> bool {
    matches!(name, "_metadata" | "__metadata__" | "_version" | "__version__") || name.ends_with("_extra_state")
}

/// Finds the state dict in a checkpoint's object and describes its tensors, in order.
fn state_dict_specs(pk: &Pickle) -> Result<Vec<(String, TensorSpec)>> {
    let mut dict_id = pk.root;
    for _ in 0..4 {
        let dict = pk
            .as_dict(dict_id)
            .ok_or_else(|| anyhow!("the checkpoint holds {}, not a state dict", pk.describe(dict_id)))?;
        let wrapped = WRAPPER_KEYS.iter().filter_map(|k| pk.dict_get(dict, k)).find(|&v| pk.as_dict(v).is_some());
        let plain = dict.is_empty() || dict.entries().iter().any(|&(_, v)| is_tensor_like(pk, v));
        match wrapped {
            Some(inner) if !plain => dict_id = inner,
            _ if plain => return specs_of(pk, dict_id),
            _ => {
                let keys: Vec<String> = dict
                    .entries()
                    .iter()
                    .take(20)
                    .map(|&(k, _)| pk.as_str(k).map_or_else(|| pk.describe(k), short_repr))
                    .collect();
                let more = if dict.len() > 20 { ", …" } else { "" };
                bail!(
                    "no state dict in the checkpoint: its top-level keys are [{}{more}] \
                     (expected a dict of tensors, or one under \"state_dict\", \
                     \"model_state_dict\" or \"model\")",
                    keys.join(", ")
                );
            }
        }
    }
    bail!("state dict nested too deeply")
}

fn specs_of(pk: &Pickle, dict_id: Id) -> Result<Vec<(String, TensorSpec)>> {
    let dict = pk.as_dict(dict_id).expect("checked by the caller");
    let mut specs = Vec::with_capacity(dict.len());
    for &(k, v) in dict.entries() {
        let name = pk.as_str(k).ok_or_else(|| anyhow!("state dict key is {}, not a string", pk.describe(k)))?;
        match tensor_spec(pk, v).with_context(|| format!("tensor {}", short_repr(name)))? {
            Some(spec) => specs.push((name.to_string(), spec)),
            None if is_known_metadata(name) => {}
            None => bail!("state dict entry {} is not a tensor but {}", short_repr(name), pk.describe(v)),
        }
    }
    Ok(specs)
}

// --- tensors from bytes ------------------------------------------------------------------

/// Builds the tensor `spec` describes from the bytes of its root storage: the elements it
/// spans are copied into a tensor, viewed with the sizes and strides, and made contiguous.
fn build_tensor(root: &[u8], spec: &TensorSpec) -> Result<Tensor> {
    let kind = spec.storage.kind;
    let elt = kind.elt_size_in_bytes() as u64;
    let root_numel = root.len() as u64 / elt;
    let (base, available) = match spec.storage.view {
        None => (0, root_numel),
        Some((offset, len)) => {
            ensure!(
                offset + len <= root_numel,
                "storage view [{offset}, {}) outside a storage of {root_numel} elements",
                offset + len
            );
            (offset, len)
        }
    };
    let numel = spec
        .size
        .iter()
        .try_fold(1u64, |n, &s| n.checked_mul(s as u64))
        .ok_or_else(|| anyhow!("tensor size {:?} overflows", spec.size))?;
    if numel == 0 {
        return Ok(Tensor::f_zeros(spec.size.as_slice(), (kind, Device::Cpu))?);
    }
    // The last element the view reaches, relative to the storage (view).
    let mut last = spec.offset as u64;
    for (&size, &stride) in spec.size.iter().zip(&spec.stride) {
        let reach = (size as u64 - 1).checked_mul(stride as u64);
        last = reach
            .and_then(|r| last.checked_add(r))
            .ok_or_else(|| anyhow!("tensor size {:?} and stride {:?} overflow", spec.size, spec.stride))?;
    }
    ensure!(
        last < available,
        "size {:?}, stride {:?} and offset {} reach element {last} of a storage of {available} \
         elements (corrupt checkpoint)",
        spec.size,
        spec.stride,
        spec.offset
    );
    let span = last - spec.offset as u64 + 1;
    ensure!(
        numel <= span || numel.saturating_mul(elt) <= MAX_EXPANDED_BYTES,
        "size {:?} and stride {:?} would expand {span} stored elements to {numel}",
        spec.size,
        spec.stride
    );
    let start = ((base + spec.offset as u64) * elt) as usize;
    let end = start + (span * elt) as usize;
    let bytes = &root[start..end];
    let normalised;
    let bytes = if kind == Kind::Bool {
        // A bool holding anything but 0 or 1 is undefined behaviour in libtorch.
        normalised = bytes.iter().map(|&b| u8::from(b != 0)).collect::<Vec<u8>>();
        &normalised[..]
    } else {
        bytes
    };
    let flat = Tensor::f_from_data_size(bytes, &[span as i64], kind)?;
    let view = flat.f_as_strided(spec.size.as_slice(), spec.stride.as_slice(), 0)?;
    Ok(view.f_contiguous()?)
}

/// Where the bytes of root storages come from.
trait Storages {
    /// The bytes of the root storage `storage` refers to.
    fn bytes(&mut self, storage: &StorageRef) -> Result<&[u8]>;
    /// No tensor needs storage `key` any more.
    fn release(&mut self, _key: &str) {}
}

/// Builds all tensors, in order, releasing each storage after its last tensor.
fn build_state_dict(specs: &[(String, TensorSpec)], storages: &mut dyn Storages) -> Result<StateDict> {
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for (_, spec) in specs {
        *uses.entry(spec.storage.key.as_str()).or_default() += 1;
    }
    let mut dict = StateDict::new();
    for (name, spec) in specs {
        let tensor = storages
            .bytes(&spec.storage)
            .and_then(|root| build_tensor(root, spec))
            .with_context(|| format!("tensor {}", short_repr(name)))?;
        dict.insert(name.clone(), tensor);
        let left = uses.get_mut(spec.storage.key.as_str()).expect("counted above");
        *left -= 1;
        if *left == 0 {
            storages.release(&spec.storage.key);
        }
    }
    Ok(dict)
}

/// Parses the pickle at `bytes[start..]`; errors give offsets in `bytes`.
fn parse_pickle(bytes: &[u8], start: usize, what: &str) -> Result<Pickle> {
    pickle::parse(&bytes[start..], &Limits::default()).map_err(|e| match e {
        pickle::PickleError::Truncated(_) => {
            anyhow!("truncated or corrupt checkpoint: the {what} pickle ends unexpectedly at byte {}", bytes.len())
        }
        pickle::PickleError::Invalid { offset, message } => {
            anyhow!("corrupt checkpoint: the {what} pickle at byte {}: {message}", start + offset)
        }
    })
}

// --- the zip format ----------------------------------------------------------------------

fn read_zip(bytes: &[u8]) -> Result<StateDict> {
    let mut archive =
        ZipArchive::new(Cursor::new(bytes)).map_err(|e| anyhow!("truncated or corrupt zip archive ({e})"))?;
    // The record folder: that of the first `<folder>/data.pkl`.
    let prefix = (0..archive.len())
        .filter_map(|i| archive.name_for_index(i).and_then(|name| name.ok()))
        .find_map(|name| {
            let folder = name.strip_suffix("data.pkl")?;
            (folder.ends_with('/') && folder[..folder.len() - 1].find('/').is_none()).then(|| folder.to_string())
        })
        .ok_or_else(|| anyhow!("zip archive without a <name>/data.pkl: not a PyTorch checkpoint"))?;

    if let Some(order) = read_small_entry(&mut archive, &format!("{prefix}byteorder"))? {
        match order.trim_ascii() {
            b"little" => {}
            b"big" => bail!("big-endian checkpoint (written on a big-endian machine): unsupported"),
            other => bail!("unknown byte order {:?}", String::from_utf8_lossy(other)),
        }
    }

    let pkl = read_entry(&mut archive, &format!("{prefix}data.pkl"), None, bytes.len())?;
    let pk = parse_pickle(&pkl, 0, "data.pkl")?;
    let specs = state_dict_specs(&pk)?;

    let mut storages = ZipStorages { archive, prefix, archive_len: bytes.len(), cache: HashMap::new() };
    build_state_dict(&specs, &mut storages)
}

/// The `data/<key>` records of a zip checkpoint, read when first needed.
struct ZipStorages<'a> {
    archive: ZipArchive<Cursor<&'a [u8]>>,
    prefix: String,
    archive_len: usize,
    cache: HashMap<String, Vec<u8>>,
}

impl Storages for ZipStorages<'_> {
    fn bytes(&mut self, storage: &StorageRef) -> Result<&[u8]> {
        if !self.cache.contains_key(&storage.key) {
            let elt = storage.kind.elt_size_in_bytes() as u64;
            let declared = storage.numel.checked_mul(elt).ok_or_else(|| anyhow!("storage too large"))?;
            let name = format!("{}data/{}", self.prefix, storage.key);
            let data = read_entry(&mut self.archive, &name, Some(declared), self.archive_len)?;
            self.cache.insert(storage.key.clone(), data);
        }
        Ok(&self.cache[&storage.key])
    }

    fn release(&mut self, key: &str) {
        self.cache.remove(key);
    }
}

/// A small text entry, if the archive has it.
fn read_small_entry(archive: &mut ZipArchive<Cursor<&[u8]>>, name: &str) -> Result<Option<Vec<u8>>> {
    if archive.index_for_name(name).is_none() {
        return Ok(None);
    }
    let mut out = Vec::new();
    let entry = archive.by_name(name).map_err(|e| anyhow!("zip entry {name}: {e}"))?;
    entry.take(4096).read_to_end(&mut out).map_err(|e| anyhow!("zip entry {name}: {e}"))?;
    Ok(Some(out))
}

/// Reads an entry whole. With `expected`, it must hold exactly that many bytes; without it,
/// at most [`MAX_PICKLE_BYTES`]. Nothing is allocated beyond what the archive can really
/// hold, whatever its headers claim.
fn read_entry(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    name: &str,
    expected: Option<u64>,
    archive_len: usize,
) -> Result<Vec<u8>> {
    let entry = archive.by_name(name).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => anyhow!("zip archive lacks the entry {name}"),
        e => anyhow!("zip entry {name}: {e}"),
    })?;
    let compressed = entry.compressed_size();
    // Deflate cannot expand data more than about 1032 times.
    let most = match entry.compression() {
        CompressionMethod::Stored => compressed,
        _ => compressed.saturating_mul(1032).saturating_add(1024),
    }
    .min(archive_len as u64 * 1032 + 1024);
    let limit = expected.unwrap_or(MAX_PICKLE_BYTES);
    if let Some(expected) = expected {
        ensure!(
            expected <= most && expected <= entry.size(),
            "zip entry {name} holds {} bytes, the checkpoint expects {expected} (truncated or corrupt)",
            entry.size()
        );
    }
    let mut out = Vec::with_capacity(limit.min(most).min(entry.size()) as usize);
    // One byte more than allowed, so that an overlong entry shows, and so that the reader
    // reaches the end of the entry and checks its CRC.
    entry.take(limit + 1).read_to_end(&mut out).map_err(|e| anyhow!("zip entry {name}: {e} (truncated or corrupt)"))?;
    match expected {
        Some(expected) => ensure!(
            out.len() as u64 == expected,
            "zip entry {name} holds {} bytes, the checkpoint expects {expected}",
            out.len()
        ),
        None => ensure!(out.len() as u64 <= limit, "zip entry {name} is larger than {limit} bytes"),
    }
    Ok(out)
}

// --- the legacy format -------------------------------------------------------------------

fn read_legacy(bytes: &[u8]) -> Result<StateDict> {
    let mut pos = 0usize;
    let mut next = |what: &str| -> Result<Pickle> {
        let pk = parse_pickle(bytes, pos, what)?;
        pos += pk.consumed;
        Ok(pk)
    };
    let magic = next("magic number")?;
    ensure!(
        magic.as_int(magic.root) == Some(LEGACY_MAGIC),
        "not a PyTorch checkpoint (a pickle without PyTorch's magic number)"
    );
    let version = next("protocol version")?;
    ensure!(
        version.as_int(version.root) == Some(LEGACY_PROTOCOL),
        "unsupported legacy checkpoint protocol version {}",
        version.describe(version.root)
    );
    let sys_info = next("sys_info")?;
    if let Some(info) = sys_info.as_dict(sys_info.root) {
        if let Some(little) = sys_info.dict_get(info, "little_endian") {
            if sys_info.as_int(little) == Some(0) {
                bail!("big-endian checkpoint (written on a big-endian machine): unsupported");
            }
        }
    }
    let pk = next("object")?;
    let keys_pk = next("storage keys")?;
    let keys = keys_pk
        .as_seq(keys_pk.root)
        .ok_or_else(|| anyhow!("corrupt checkpoint: the storage key list is {}", keys_pk.describe(keys_pk.root)))?
        .iter()
        .map(|&k| match (keys_pk.as_str(k), keys_pk.as_int(k)) {
            (Some(s), _) => Ok(s.to_string()),
            (None, Some(i)) => Ok(i.to_string()),
            _ => bail!("corrupt checkpoint: storage key is {}", keys_pk.describe(k)),
        })
        .collect::<Result<Vec<_>>>()?;

    // The element type of every storage the object refers to, state dict or not.
    let mut kinds: HashMap<String, Kind> = HashMap::new();
    for object in &pk.objects {
        if let Object::Persistent(pid) = object {
            if let Ok(storage) = storage_ref(&pk, *pid) {
                kinds.entry(storage.key).or_insert(storage.kind);
            }
        }
    }
    let specs = state_dict_specs(&pk)?;

    // The storages follow the pickles, in the order of the key list.
    let mut ranges: HashMap<String, std::ops::Range<usize>> = HashMap::new();
    for key in &keys {
        let kind =
            *kinds.get(key).ok_or_else(|| anyhow!("corrupt checkpoint: storage {key} is listed but never used"))?;
        let header = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| anyhow!("truncated checkpoint: storage {key} missing at byte {pos}"))?;
        let count = i64::from_le_bytes(header.try_into().expect("8 bytes"));
        pos += 8;
        let len = u64::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(kind.elt_size_in_bytes() as u64))
            .filter(|&len| len <= (bytes.len() - pos) as u64)
            .ok_or_else(|| {
                anyhow!(
                    "truncated checkpoint: storage {key} declares {count} elements at byte {}, \
                     only {} bytes follow",
                    pos - 8,
                    bytes.len() - pos
                )
            })? as usize;
        ranges.insert(key.clone(), pos..pos + len);
        pos += len;
    }
    build_state_dict(&specs, &mut LegacyStorages { bytes, ranges })
}

/// The storages of a legacy checkpoint: ranges of the file's bytes.
struct LegacyStorages<'a> {
    bytes: &'a [u8],
    ranges: HashMap<String, std::ops::Range<usize>>,
}

impl Storages for LegacyStorages<'_> {
    fn bytes(&mut self, storage: &StorageRef) -> Result<&[u8]> {
        let range = self
            .ranges
            .get(&storage.key)
            .ok_or_else(|| anyhow!("corrupt checkpoint: storage {} is missing from the data", storage.key))?;
        let data = &self.bytes[range.clone()];
        let elt = storage.kind.elt_size_in_bytes() as u64;
        ensure!(
            data.len() as u64 / elt >= storage.numel,
            "truncated or corrupt checkpoint: storage {} holds {} bytes, {} elements declared",
            storage.key,
            data.len(),
            storage.numel
        );
        Ok(data)
    }
}

// --- the writer --------------------------------------------------------------------------

/// A pickle written by hand, protocol 2, with the opcodes `torch.load(weights_only=True)`
/// accepts.
struct PickleWriter {
    out: Vec<u8>,
    memo: HashMap<String, u8>,
}

impl PickleWriter {
    fn new() -> Self {
        PickleWriter { out: vec![0x80, 2], memo: HashMap::new() }
    }

    /// `GLOBAL module name`, memoised after its first use.
    fn global(&mut self, module: &str, name: &str) {
        let full = format!("{module}\n{name}\n");
        if let Some(&i) = self.memo.get(&full) {
            self.out.extend([b'h', i]);
            return;
        }
        let i = u8::try_from(self.memo.len()).expect("fewer than 256 globals");
        self.out.push(b'c');
        self.out.extend_from_slice(full.as_bytes());
        self.out.extend([b'q', i]);
        self.memo.insert(full, i);
    }

    fn string(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        if (0..256).contains(&v) {
            self.out.extend([b'K', v as u8]);
        } else if (0..65536).contains(&v) {
            self.out.push(b'M');
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if i32::try_from(v).is_ok() {
            self.out.push(b'J');
            self.out.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            // LONG1: the shortest little-endian two's complement.
            let bytes = v.to_le_bytes();
            let mut n = 8;
            while n > 1 {
                let (last, prev) = (bytes[n - 1], bytes[n - 2]);
                if (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0) {
                    n -= 1;
                } else {
                    break;
                }
            }
            self.out.extend([0x8a, n as u8]);
            self.out.extend_from_slice(&bytes[..n]);
        }
    }

    fn int_tuple(&mut self, values: &[i64]) {
        if values.is_empty() {
            self.out.push(b')');
            return;
        }
        self.out.push(b'(');
        for &v in values {
            self.int(v);
        }
        self.out.push(b't');
    }
}

/// What the writer needs of one tensor.
struct Entry<'a> {
    name: &'a str,
    tensor: &'a Tensor,
    kind: Kind,
    size: Vec<i64>,
    numel: u64,
}

fn entries(dict: &StateDict) -> Result<Vec<Entry<'_>>> {
    dict.iter()
        .map(|(name, tensor)| {
            let what = || format!("tensor {}", short_repr(name));
            ensure!(tensor.defined(), "{}: undefined tensor", what());
            let kind = tensor.f_kind().with_context(what)?;
            ensure!(storage_class(kind).is_some(), "{}: unsupported dtype {kind:?}", what());
            let size = tensor.size();
            let numel = size.iter().map(|&s| s as u64).product();
            Ok(Entry { name, tensor, kind, size, numel })
        })
        .collect()
}

/// `data.pkl`: an `OrderedDict` of `_rebuild_tensor_v2` calls, storage `i` for tensor `i`.
fn state_dict_pickle(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut w = PickleWriter::new();
    w.global("collections", "OrderedDict");
    w.out.extend([b')', b'R']);
    for (batch_start, batch) in entries.chunks(1000).enumerate() {
        w.out.push(b'(');
        for (j, e) in batch.iter().enumerate() {
            let index = batch_start * 1000 + j;
            w.string(e.name);
            w.global("torch._utils", "_rebuild_tensor_v2");
            w.out.push(b'(');
            // The storage: BINPERSID of ('storage', class, key, location, numel).
            w.out.push(b'(');
            w.string("storage");
            w.global("torch", storage_class(e.kind).expect("checked in entries()"));
            w.string(&index.to_string());
            w.string("cpu");
            w.int(e.numel as i64);
            w.out.extend([b't', b'Q']);
            w.int(0);
            w.int_tuple(&e.size);
            w.int_tuple(&contiguous_strides(&e.size));
            w.out.push(0x89); // requires_grad = False
            w.global("collections", "OrderedDict"); // backward hooks
            w.out.extend([b')', b'R']);
            w.out.extend([b't', b'R']);
        }
        w.out.push(b'u');
    }
    w.out.push(b'.');
    w.out
}

fn contiguous_strides(size: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; size.len()];
    for i in (0..size.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * size[i + 1].max(1);
    }
    strides
}

/// The raw little-endian bytes of a tensor, from a contiguous CPU copy.
fn tensor_bytes(e: &Entry<'_>) -> Result<Vec<u8>> {
    let t = e.tensor.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
    let numel = e.numel as usize;
    let mut out = vec![0u8; numel * e.kind.elt_size_in_bytes()];
    if numel > 0 {
        t.f_copy_data_u8(&mut out, numel)?;
    }
    Ok(out)
}

/// Writes `dict` in PyTorch's zip format: `archive/data.pkl`, `archive/byteorder`,
/// `archive/data/<i>` (stored, 64-byte aligned) and `archive/version`.
pub fn write<W: Write + Seek>(dict: &StateDict, out: W) -> Result<()> {
    if cfg!(target_endian = "big") {
        bail!("writing PyTorch checkpoints needs a little-endian machine");
    }
    let entries = entries(dict)?;
    let mut zip = ZipWriter::new(StopAtFirstError::new(out));
    let small = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", small)?;
    zip.write_all(&state_dict_pickle(&entries))?;
    zip.start_file("archive/byteorder", small)?;
    zip.write_all(b"little")?;
    for (i, e) in entries.iter().enumerate() {
        let bytes = tensor_bytes(e).with_context(|| format!("tensor {}", short_repr(e.name)))?;
        let options = small.with_alignment(64).large_file(bytes.len() as u64 >= u32::MAX as u64);
        zip.start_file(format!("archive/data/{i}"), options)?;
        zip.write_all(&bytes)?;
    }
    zip.start_file("archive/version", small)?;
    zip.write_all(b"3\n")?;
    zip.finish()?;
    Ok(())
}

/// Passes everything to `inner` until an operation fails, then only keeps count of the
/// position, as a writer to nowhere. The error has been returned to `write`'s caller by then;
/// this keeps `ZipWriter`'s `Drop`, which tries to finish the archive and prints any failure
/// to stderr, from writing again to a writer that failed (a full disk, say) and from adding a
/// second, unasked-for message (it needs positions that add up to finish quietly).
struct StopAtFirstError<W> {
    inner: W,
    failed: bool,
    /// The position, and the furthest byte written, as the archive sees them.
    pos: u64,
    end: u64,
}

impl<W> StopAtFirstError<W> {
    fn new(inner: W) -> Self {
        StopAtFirstError { inner, failed: false, pos: 0, end: 0 }
    }
}

impl<W: Write> Write for StopAtFirstError<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = if self.failed { buf.len() } else { self.inner.write(buf).inspect_err(|_| self.failed = true)? };
        self.pos += n as u64;
        self.end = self.end.max(self.pos);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.failed {
            return Ok(());
        }
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

impl<W: Seek> Seek for StopAtFirstError<W> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        use std::io::SeekFrom;
        self.pos = if self.failed {
            let base = |b: u64, d: i64| b.checked_add_signed(d).ok_or(std::io::ErrorKind::InvalidInput);
            match to {
                SeekFrom::Start(p) => p,
                SeekFrom::Current(d) => base(self.pos, d)?,
                SeekFrom::End(d) => base(self.end, d)?,
            }
        } else {
            self.inner.seek(to).inspect_err(|_| self.failed = true)?
        };
        self.end = self.end.max(self.pos);
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        assert_eq!(detect(b""), Format::Empty);
        assert_eq!(detect(b"PK\x03\x04rest"), Format::Zip);
        assert_eq!(detect(&[0x80, 2, 0x8a, 10]), Format::Legacy);
        assert_eq!(detect(b"hello world, this is text"), Format::Unknown);
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend(b"{}");
        assert_eq!(detect(&st), Format::Safetensors);
        let mut tar = vec![0u8; 600];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(detect(&tar), Format::Tar);
    }

    /// A writer with room for `room` bytes, like a nearly full disk.
    struct Full {
        room: usize,
        at: u64,
        end: u64,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if buf.len() > self.room {
                return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left"));
            }
            self.room -= buf.len();
            self.at += buf.len() as u64;
            self.end = self.end.max(self.at);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Seek for Full {
        fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
            self.at = match pos {
                std::io::SeekFrom::Start(p) => p,
                std::io::SeekFrom::Current(d) => self.at.saturating_add_signed(d),
                std::io::SeekFrom::End(d) => self.end.saturating_add_signed(d),
            };
            Ok(self.at)
        }
    }

    #[test]
    fn a_full_disk_is_one_error_and_the_writer_is_left_alone_after_it() {
        let mut dict = StateDict::new();
        dict.insert("w", Tensor::zeros([1000], (Kind::Float, tch::Device::Cpu)));
        for room in [10, 300, 3000] {
            let mut w = StopAtFirstError::new(Full { room, at: 0, end: 0 });
            assert!(w.write_all(&vec![0; room + 1]).is_err());
            assert!(w.failed);
            assert!(w.write_all(b"more").is_ok() && w.inner.room == room, "written to after failing");
            let err = write(&dict, Full { room, at: 0, end: 0 }).unwrap_err();
            assert!(format!("{err:#}").contains("no space left"), "{err:#}");
        }
    }

    #[test]
    fn writer_ints_round_trip_through_the_reader() {
        let values = [0i64, 255, 256, 65535, 65536, -1, -129, 1 << 31, i64::MAX, i64::MIN];
        let mut w = PickleWriter::new();
        w.int_tuple(&values);
        w.out.push(b'.');
        let pk = pickle::parse(&w.out, &Limits::default()).unwrap();
        let got: Vec<i128> = pk.as_seq(pk.root).unwrap().iter().map(|&i| pk.as_int(i).unwrap()).collect();
        assert_eq!(got, values.map(i128::from));
    }

    #[test]
    fn strides() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), [12, 4, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<i64>::new());
        assert_eq!(contiguous_strides(&[0, 3]), [3, 1]);
    }

    fn spec(kind: Kind, offset: i64, size: &[i64], stride: &[i64]) -> TensorSpec {
        TensorSpec {
            storage: StorageRef { key: "0".into(), kind, numel: 0, view: None },
            offset,
            size: size.to_vec(),
            stride: stride.to_vec(),
        }
    }

    #[test]
    fn views_are_checked_against_the_storage() {
        let root: Vec<u8> = (0..6).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let t = build_tensor(&root, &spec(Kind::Float, 1, &[2, 2], &[1, 3])).unwrap();
        assert_eq!(Vec::<f32>::try_from(t.flatten(0, -1)).unwrap(), [1.0, 4.0, 2.0, 5.0]);
        assert!(build_tensor(&root, &spec(Kind::Float, 2, &[2, 2], &[1, 3])).is_err());
        assert!(build_tensor(&root, &spec(Kind::Float, 0, &[i64::MAX, 2], &[i64::MAX, 1])).is_err());
        assert!(build_tensor(&root, &spec(Kind::Float, 0, &[1 << 40], &[0])).is_err());
        let empty = build_tensor(&root, &spec(Kind::Float, 0, &[0, 5], &[5, 1])).unwrap();
        assert_eq!(empty.size(), [0, 5]);
    }
}
