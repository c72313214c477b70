//! PyTorch checkpoints in and out.
//!
//! [`load`] reads a state dict from the zip format of `torch.save` (PyTorch >= 1.6), its
//! legacy pickle-stream format (PyTorch <= 1.5, which the published ADVENT and DeepLab
//! weights use) or safetensors, telling them apart by their bytes. [`save`] writes the zip
//! format that `torch.load(f, weights_only=True)` reads, or safetensors, by extension.
//!
//! Tensors come back on the CPU, contiguous, with the dtype of the file (a `float16`
//! checkpoint gives `Kind::Half` tensors: convert them as needed). The pickles are read by a
//! small machine of our own ([`pickle`]) that never executes anything.

pub mod pickle;
pub mod pth;

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use tch::{Device, Tensor};

/// Named tensors in file order (a PyTorch state dict).
pub struct StateDict {
    entries: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
}

impl StateDict {
    pub fn new() -> Self {
        StateDict { entries: Vec::new(), index: HashMap::new() }
    }

    /// Adds a tensor at the end; a tensor of the same name is replaced in place.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        let name = name.into();
        match self.index.get(&name) {
            Some(&i) => self.entries[i].1 = tensor,
            None => {
                self.index.insert(name.clone(), self.entries.len());
                self.entries.push((name, tensor));
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    /// Removes a tensor, keeping the order of the others.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        let i = self.index.remove(name)?;
        let (_, tensor) = self.entries.remove(i);
        for (n, _) in &self.entries[i..] {
            *self.index.get_mut(n).expect("indexed") -= 1;
        }
        Some(tensor)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// `(name, tensor)` pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// All variables of a VarStore, sorted in "natural" order (numeric path components
    /// compared as numbers: `layer3.2` < `layer3.10`). The tensors share their storage with
    /// the variables (they are shallow clones).
    pub fn from_var_store(vs: &tch::nn::VarStore) -> Self {
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| natural_cmp(&a.0, &b.0));
        let mut dict = StateDict::new();
        for (name, tensor) in variables {
            dict.insert(name, tensor);
        }
        dict
    }
}

impl Default for StateDict {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for StateDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(n, t)| {
                let kind = t.f_kind().map(|k| format!("{k:?}")).unwrap_or_else(|_| "?".into());
                (n, format!("{kind}{:?}", t.size()))
            }))
            .finish()
    }
}

impl IntoIterator for StateDict {
    type Item = (String, Tensor);
    type IntoIter = std::vec::IntoIter<(String, Tensor)>;

    /// `(name, tensor)` pairs, in order.
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// Compares dotted names with their numeric components as numbers (`layer3.2` < `layer3.10`).
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let mut a_parts = a.split('.');
    let mut b_parts = b.split('.');
    loop {
        match (a_parts.next(), b_parts.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => {
                let numeric = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
                let order = if numeric(x) && numeric(y) {
                    let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                    x.len().cmp(&y.len()).then_with(|| x.cmp(y))
                } else {
                    x.cmp(y)
                };
                if order.is_ne() {
                    return order;
                }
            }
        }
    }
}

/// Reads a checkpoint, detecting the format from the bytes (not the extension):
/// PyTorch zip format (torch >= 1.6), PyTorch legacy format (pickle stream, torch <= 1.5,
/// e.g. 0.4.1 files), safetensors.
///
/// The state dict is the object of the file when that is a dict of tensors, or the dict
/// found under `state_dict`, `model_state_dict` or `model`.
pub fn load(path: &Path) -> Result<StateDict> {
    let context = || format!("reading {}", path.display());
    let bytes = std::fs::read(path).with_context(context)?;
    match pth::detect(&bytes) {
        pth::Format::Safetensors => read_safetensors(path, &bytes),
        _ => pth::read(&bytes),
    }
    .with_context(context)
}

/// Reads a safetensors file through libtorch's reader, in the order of the data.
fn read_safetensors(path: &Path, bytes: &[u8]) -> Result<StateDict> {
    let mut tensors = Tensor::read_safetensors(path)?;
    // The order of the data in the file (the header is a JSON map, unordered).
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let offsets: HashMap<String, u64> = bytes
        .get(8..8 + header_len)
        .and_then(|h| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(h).ok())
        .map(|map| map.into_iter().filter_map(|(name, info)| Some((name, info["data_offsets"][0].as_u64()?))).collect())
        .unwrap_or_default();
    tensors.sort_by(|a, b| {
        let (x, y) = (offsets.get(&a.0), offsets.get(&b.0));
        x.cmp(&y).then_with(|| natural_cmp(&a.0, &b.0))
    });
    let mut dict = StateDict::new();
    for (name, tensor) in tensors {
        dict.insert(name, tensor);
    }
    Ok(dict)
}

/// Writes by extension: `.pth`/`.pt` -> PyTorch zip format that
/// `torch.load(f, weights_only=True)` reads; `.safetensors` -> safetensors. Other
/// extension: error. Atomic (temporary + rename).
///
/// Every tensor is written as a contiguous CPU copy, without its gradient; dtypes: float32,
/// float64, float16, bfloat16, int64, int32, int16, int8, uint8, bool (and complex64/128 in
/// `.pth` only).
pub fn save(dict: &StateDict, path: &Path) -> Result<()> {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("pth" | "pt") => crate::fs::write_atomic(path, |out| pth::write(dict, &mut *out)),
        Some("safetensors") => {
            let tensors = dict
                .iter()
                .map(|(name, t)| {
                    let t = t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
                    Ok((name, t))
                })
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("writing {}", path.display()))?;
            crate::fs::write_via_temporary(path, |tmp| {
                Tensor::write_safetensors(&tensors, tmp)?;
                Ok(())
            })
        }
        _ => bail!("writing {}: unknown checkpoint extension (expected .pth, .pt or .safetensors)", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn natural_order() {
        assert_eq!(natural_cmp("layer3.2.conv", "layer3.10.conv"), Ordering::Less);
        assert_eq!(natural_cmp("layer3.10", "layer3.9"), Ordering::Greater);
        assert_eq!(natural_cmp("a.b", "a.b.c"), Ordering::Less);
        assert_eq!(natural_cmp("a.bias", "a.weight"), Ordering::Less);
        assert_eq!(natural_cmp("x.007", "x.7"), Ordering::Equal);
    }

    #[test]
    fn insert_replaces_in_place_and_remove_keeps_order() {
        let mut d = StateDict::new();
        for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
            d.insert(*n, Tensor::from(i as i64));
        }
        d.insert("b", Tensor::from(10i64));
        assert_eq!(d.names().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(i64::try_from(d.get("b").unwrap()).unwrap(), 10);
        assert_eq!(i64::try_from(d.remove("b").unwrap()).unwrap(), 10);
        assert!(d.remove("b").is_none());
        assert_eq!(d.names().collect::<Vec<_>>(), ["a", "c", "d"]);
        assert_eq!(i64::try_from(d.get("d").unwrap()).unwrap(), 3);
        assert!(d.contains("c") && !d.contains("b"));
        assert_eq!(d.len(), 3);
        assert!(!d.is_empty());
    }

    #[test]
    fn from_var_store_is_in_natural_order() {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        for name in ["layer3.10.w", "layer3.2.w", "layer1.0.w", "fc.bias"] {
            let mut p = root.clone();
            for part in name.split('.') {
                p = p / part;
            }
            let _ = p.zeros("v", &[1]);
        }
        let d = StateDict::from_var_store(&vs);
        assert_eq!(d.names().collect::<Vec<_>>(), ["fc.bias.v", "layer1.0.w.v", "layer3.2.w.v", "layer3.10.w.v"]);
    }
}
