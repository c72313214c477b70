//! A small pickle virtual machine that reads PyTorch checkpoints without executing anything.
//!
//! The machine understands the opcodes of pickle protocols 0 to 5 that state dicts use. It
//! never imports or calls code: a global is only a `(module, name)` pair, `REDUCE` of a few
//! well-known constructors (`collections.OrderedDict`, `builtins.set`, ...) builds the value,
//! and the call of any other callable becomes an [`Object::Call`] that the caller interprets
//! (PyTorch's `torch._utils._rebuild_tensor_v2`, for instance, see `pth.rs`). Persistent ids
//! (`BINPERSID`, `PERSID`) become [`Object::Persistent`] holding the id object.
//!
//! All objects live in one arena ([`Pickle::objects`]) and refer to each other by [`Id`], so
//! a container that is memoised and then filled (`EMPTY_DICT`, `BINPUT`, ..., `SETITEMS`) is
//! shared by everything that fetched it from the memo, and dropping even a deeply nested
//! structure does not recurse.
//!
//! Any byte string gives either a value or an error, never a panic: every length is checked
//! against the remaining input before anything is allocated, and the number of objects is
//! bounded by [`Limits`].

use std::collections::HashMap;

/// Index of an object in [`Pickle::objects`].
pub type Id = usize;

/// A value of the pickle's object graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    None,
    Bool(bool),
    /// An integer that fits in 128 bits.
    Int(i128),
    /// A larger integer: its little-endian two's-complement bytes (as `LONG1`/`LONG4` hold it).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    /// `bytes`, `bytearray`, and Python 2 `str` that is not valid UTF-8.
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Dict),
    Set(Vec<Id>),
    FrozenSet(Vec<Id>),
    /// A class or function named by `GLOBAL`/`STACK_GLOBAL`/`INST` (never imported).
    Global {
        module: String,
        name: String,
    },
    /// The result of a persistent load: the persistent id object.
    Persistent(Id),
    /// The lazy result of calling `callable`: `REDUCE`, `NEWOBJ`, `NEWOBJ_EX`, `INST`, `OBJ`.
    Call(Box<Call>),
}

/// A call that the machine did not perform, with what the pickle did to its result.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub callable: Id,
    /// Positional arguments (a tuple, normally).
    pub args: Id,
    /// Keyword arguments of `NEWOBJ_EX`.
    pub kwargs: Option<Id>,
    /// Whether the object was made by `cls.__new__` (`NEWOBJ`, `NEWOBJ_EX`) rather than a call.
    pub new: bool,
    /// The argument of `BUILD` (the last one, if several).
    pub state: Option<Id>,
    /// Items set by `SETITEM(S)`.
    pub items: Vec<(Id, Id)>,
    /// Items added by `APPEND(S)`/`ADDITEMS`.
    pub appended: Vec<Id>,
}

/// A dictionary in insertion order; setting an existing key replaces its value in place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dict {
    entries: Vec<(Id, Id)>,
    index: HashMap<Key, usize>,
}

impl Dict {
    /// `(key, value)` pairs in insertion order.
    pub fn entries(&self) -> &[(Id, Id)] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What makes two dictionary keys equal: their value for strings, numbers, bytes and small
/// tuples of those; their identity for anything else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    None,
    Int(i128),
    BigInt(Vec<u8>),
    Float(u64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Key>),
    Identity(Id),
}

/// Bounds on the work done for one pickle.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most objects the arena may hold.
    pub max_objects: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_objects: 1 << 24 }
    }
}

/// Why a pickle could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickleError {
    /// The input ended before the `STOP` opcode.
    #[error("pickle data ends unexpectedly at byte {0} (truncated or corrupt)")]
    Truncated(usize),
    /// Anything else, at the offset of the opcode that failed.
    #[error("invalid pickle data at byte {offset}: {message}")]
    Invalid { offset: usize, message: String },
}

/// A parsed pickle: its objects and the one `STOP` returned.
#[derive(Debug, Clone)]
pub struct Pickle {
    pub objects: Vec<Object>,
    pub root: Id,
    /// Bytes of input consumed, `STOP` included (the next pickle of a stream starts there).
    pub consumed: usize,
}

impl Pickle {
    /// The object `id` refers to.
    pub fn get(&self, id: Id) -> &Object {
        &self.objects[id]
    }

    /// The root object.
    pub fn root(&self) -> &Object {
        self.get(self.root)
    }

    /// The string `id` holds, if it is one (a Python 2 byte string that is ASCII counts).
    pub fn as_str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Object::Str(s) => Some(s),
            Object::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The integer `id` holds, if it is one (booleans count, as in Python).
    pub fn as_int(&self, id: Id) -> Option<i128> {
        match self.get(id) {
            Object::Int(i) => Some(*i),
            Object::Bool(b) => Some(i128::from(*b)),
            _ => None,
        }
    }

    /// The items of a tuple or list.
    pub fn as_seq(&self, id: Id) -> Option<&[Id]> {
        match self.get(id) {
            Object::Tuple(v) | Object::List(v) => Some(v),
            _ => None,
        }
    }

    /// The dictionary `id` holds, if it is one.
    pub fn as_dict(&self, id: Id) -> Option<&Dict> {
        match self.get(id) {
            Object::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// `(module, name)` of a global.
    pub fn as_global(&self, id: Id) -> Option<(&str, &str)> {
        match self.get(id) {
            Object::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    /// The value of the string key `key` in the dictionary `dict`.
    pub fn dict_get(&self, dict: &Dict, key: &str) -> Option<Id> {
        dict.index.get(&Key::Str(key.to_string())).map(|&i| dict.entries[i].1)
    }

    /// A short description of an object for error messages: its type, and its value when
    /// that is short.
    pub fn describe(&self, id: Id) -> String {
        match self.get(id) {
            Object::None => "None".into(),
            Object::Bool(b) => if *b { "True" } else { "False" }.into(),
            Object::Int(i) => format!("an int ({i})"),
            Object::BigInt(_) => "a large int".into(),
            Object::Float(f) => format!("a float ({f})"),
            Object::Str(s) => format!("a str ({})", short_repr(s)),
            Object::Bytes(b) => format!("bytes of length {}", b.len()),
            Object::Tuple(v) => format!("a tuple of length {}", v.len()),
            Object::List(v) => format!("a list of length {}", v.len()),
            Object::Dict(d) => format!("a dict of length {}", d.len()),
            Object::Set(v) => format!("a set of length {}", v.len()),
            Object::FrozenSet(v) => format!("a frozenset of length {}", v.len()),
            Object::Global { module, name } => format!("the global {module}.{name}"),
            Object::Persistent(_) => "a persistent object".into(),
            Object::Call(call) => match self.as_global(call.callable) {
                Some((m, n)) => format!("an object built by {m}.{n}"),
                None => "an object of an unknown type".into(),
            },
        }
    }
}

/// `'text'` for messages, cut at 60 characters.
pub(crate) fn short_repr(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

/// Reads the pickle that starts at `bytes[0]` up to its `STOP` opcode. The bytes after it
/// are left alone: [`Pickle::consumed`] says where they begin.
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Pickle, PickleError> {
    Machine::new(bytes, limits).run()
}

// --- opcodes ---------------------------------------------------------------------------------

const MARK: u8 = b'(';
const STOP: u8 = b'.';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const DUP: u8 = b'2';
const FLOAT: u8 = b'F';
const INT: u8 = b'I';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const LONG: u8 = b'L';
const BININT2: u8 = b'M';
const NONE: u8 = b'N';
const PERSID: u8 = b'P';
const BINPERSID: u8 = b'Q';
const REDUCE: u8 = b'R';
const STRING: u8 = b'S';
const BINSTRING: u8 = b'T';
const SHORT_BINSTRING: u8 = b'U';
const UNICODE: u8 = b'V';
const BINUNICODE: u8 = b'X';
const APPEND: u8 = b'a';
const BUILD: u8 = b'b';
const GLOBAL: u8 = b'c';
const DICT: u8 = b'd';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const GET: u8 = b'g';
const BINGET: u8 = b'h';
const INST: u8 = b'i';
const LONG_BINGET: u8 = b'j';
const LIST: u8 = b'l';
const EMPTY_LIST: u8 = b']';
const OBJ: u8 = b'o';
const PUT: u8 = b'p';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SETITEM: u8 = b's';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const SETITEMS: u8 = b'u';
const BINFLOAT: u8 = b'G';
const PROTO: u8 = 0x80;
const NEWOBJ: u8 = 0x81;
const EXT1: u8 = 0x82;
const EXT2: u8 = 0x83;
const EXT4: u8 = 0x84;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINBYTES8: u8 = 0x8e;
const EMPTY_SET: u8 = 0x8f;
const ADDITEMS: u8 = 0x90;
const FROZENSET: u8 = 0x91;
const NEWOBJ_EX: u8 = 0x92;
const STACK_GLOBAL: u8 = 0x93;
const MEMOIZE: u8 = 0x94;
const FRAME: u8 = 0x95;
const BYTEARRAY8: u8 = 0x96;
const NEXT_BUFFER: u8 = 0x97;
const READONLY_BUFFER: u8 = 0x98;

/// Nesting depth beyond which a tuple key is compared by identity rather than by value.
const KEY_DEPTH: usize = 8;
/// Size beyond which a tuple key is compared by identity rather than by value.
const KEY_NODES: usize = 64;

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed (for errors).
    at: usize,
    limits: Limits,
    objects: Vec<Object>,
    stack: Vec<Id>,
    /// Stack heights at each open `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

type Step<T> = Result<T, PickleError>;

impl<'a> Machine<'a> {
    fn new(input: &'a [u8], limits: &Limits) -> Self {
        Machine {
            input,
            pos: 0,
            at: 0,
            limits: *limits,
            objects: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn fail<T>(&self, message: impl Into<String>) -> Step<T> {
        Err(PickleError::Invalid { offset: self.at, message: message.into() })
    }

    // --- input ---------------------------------------------------------------------------

    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let input: &'a [u8] = self.input;
        match self.pos.checked_add(n) {
            Some(end) if end <= input.len() => {
                let out = &input[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            _ => Err(PickleError::Truncated(input.len())),
        }
    }

    fn byte(&mut self) -> Step<u8> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A length prefix that must fit in the remaining input.
    fn length(&mut self, n: u64) -> Step<usize> {
        let remaining = self.input.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= remaining => Ok(n),
            _ => Err(PickleError::Truncated(self.input.len())),
        }
    }

    /// A text line without its `\n` (protocol 0 arguments).
    fn line(&mut self) -> Step<&'a [u8]> {
        let input: &'a [u8] = self.input;
        let rest = &input[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) => {
                self.pos += n + 1;
                let line = &rest[..n];
                // Pickles written on Windows in text mode may carry "\r\n".
                Ok(line.strip_suffix(b"\r").unwrap_or(line))
            }
            None => Err(PickleError::Truncated(input.len())),
        }
    }

    fn line_str(&mut self) -> Step<&'a str> {
        let line = self.line()?;
        match std::str::from_utf8(line) {
            Ok(s) => Ok(s),
            Err(_) => self.fail("text argument is not UTF-8"),
        }
    }

    // --- objects and stack ----------------------------------------------------------------

    fn alloc(&mut self, object: Object) -> Step<Id> {
        if self.objects.len() >= self.limits.max_objects {
            return self.fail(format!("more than {} objects", self.limits.max_objects));
        }
        self.objects.push(object);
        Ok(self.objects.len() - 1)
    }

    fn push(&mut self, object: Object) -> Step<()> {
        let id = self.alloc(object)?;
        self.stack.push(id);
        Ok(())
    }

    /// The bottom of the current stack frame (above the innermost mark).
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Step<Id> {
        if self.stack.len() <= self.floor() {
            return self.fail("stack underflow");
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    fn top(&self) -> Step<Id> {
        if self.stack.len() <= self.floor() {
            return self.fail("stack underflow");
        }
        Ok(*self.stack.last().expect("checked above"))
    }

    /// Removes and returns the items above the innermost mark, and the mark.
    fn pop_mark(&mut self) -> Step<Vec<Id>> {
        match self.marks.pop() {
            Some(height) => Ok(self.stack.split_off(height)),
            None => self.fail("no MARK on the stack"),
        }
    }

    fn memo_put(&mut self, index: u64) -> Step<()> {
        let top = self.top()?;
        self.memo.insert(index, top);
        Ok(())
    }

    fn memo_get(&mut self, index: u64) -> Step<()> {
        match self.memo.get(&index) {
            Some(&id) => {
                self.stack.push(id);
                Ok(())
            }
            None => self.fail(format!("memo key {index} was never set")),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Step<()> {
        // The renames Python 3 applies to the pickles of Python 2.
        let module = match module {
            "__builtin__" => "builtins",
            "copy_reg" => "copyreg",
            m => m,
        };
        self.push(Object::Global { module: module.to_string(), name: name.to_string() })
    }

    fn text_or_bytes(bytes: &[u8]) -> Object {
        match std::str::from_utf8(bytes) {
            Ok(s) => Object::Str(s.to_string()),
            Err(_) => Object::Bytes(bytes.to_vec()),
        }
    }

    // --- dictionary keys ------------------------------------------------------------------

    fn key(&self, id: Id) -> Key {
        let mut budget = KEY_NODES;
        self.key_within(id, 0, &mut budget).unwrap_or(Key::Identity(id))
    }

    fn key_within(&self, id: Id, depth: usize, budget: &mut usize) -> Option<Key> {
        *budget = budget.checked_sub(1)?;
        Some(match &self.objects[id] {
            Object::None => Key::None,
            Object::Bool(b) => Key::Int(i128::from(*b)),
            Object::Int(i) => Key::Int(*i),
            Object::BigInt(b) => Key::BigInt(b.clone()),
            Object::Float(f) => {
                if f.fract() == 0.0 && f.abs() < 1e30 {
                    Key::Int(*f as i128)
                } else {
                    Key::Float(f.to_bits())
                }
            }
            Object::Str(s) => Key::Str(s.clone()),
            Object::Bytes(b) => Key::Bytes(b.clone()),
            Object::Tuple(items) if depth < KEY_DEPTH => {
                Key::Tuple(items.iter().map(|&i| self.key_within(i, depth + 1, budget)).collect::<Option<Vec<_>>>()?)
            }
            _ => return None,
        })
    }

    fn dict_insert(&mut self, dict: Id, key: Id, value: Id) -> Step<()> {
        let hashed = self.key(key);
        match &mut self.objects[dict] {
            Object::Dict(d) => match d.index.get(&hashed) {
                Some(&i) => d.entries[i].1 = value,
                None => {
                    d.index.insert(hashed, d.entries.len());
                    d.entries.push((key, value));
                }
            },
            Object::Call(call) => call.items.push((key, value)),
            _ => {
                let what = self.describe(dict);
                return self.fail(format!("SETITEM on a {what}"));
            }
        }
        Ok(())
    }

    fn describe(&self, id: Id) -> String {
        match &self.objects[id] {
            Object::Dict(_) => "dict".into(),
            Object::List(_) => "list".into(),
            Object::Tuple(_) => "tuple".into(),
            Object::Set(_) => "set".into(),
            other => format!("{other:?}").chars().take(40).collect(),
        }
    }

    fn new_dict(&mut self, pairs: Vec<(Id, Id)>) -> Step<Id> {
        let dict = self.alloc(Object::Dict(Dict::default()))?;
        for (k, v) in pairs {
            self.dict_insert(dict, k, v)?;
        }
        Ok(dict)
    }

    // --- calls ----------------------------------------------------------------------------

    /// The object made by calling `callable(*args)`: the value itself for the few
    /// constructors of plain containers, a lazy [`Call`] for anything else.
    fn call(&mut self, callable: Id, args: Id, kwargs: Option<Id>, new: bool) -> Step<Id> {
        if kwargs.is_none() {
            if let Some(id) = self.construct(callable, args)? {
                return Ok(id);
            }
        }
        self.alloc(Object::Call(Box::new(Call {
            callable,
            args,
            kwargs,
            new,
            state: None,
            items: Vec::new(),
            appended: Vec::new(),
        })))
    }

    /// The items of an iterable argument, if the machine can see them.
    fn items_of(&self, id: Id) -> Option<Vec<Id>> {
        match &self.objects[id] {
            Object::Tuple(v) | Object::List(v) | Object::Set(v) | Object::FrozenSet(v) => Some(v.clone()),
            Object::Dict(d) => Some(d.entries.iter().map(|&(k, _)| k).collect()),
            _ => None,
        }
    }

    fn construct(&mut self, callable: Id, args: Id) -> Step<Option<Id>> {
        let Object::Global { module, name } = &self.objects[callable] else {
            return Ok(None);
        };
        let Some(args) = self.items_of(args) else {
            return Ok(None);
        };
        let made = match (module.as_str(), name.as_str(), args.as_slice()) {
            ("collections", "OrderedDict", []) | ("builtins", "dict", []) => Some(self.new_dict(Vec::new())?),
            ("collections", "OrderedDict", [from]) | ("builtins", "dict", [from]) => match self.pairs_of(*from) {
                Some(pairs) => Some(self.new_dict(pairs)?),
                None => None,
            },
            ("builtins", "list", []) => Some(self.alloc(Object::List(Vec::new()))?),
            ("builtins", "tuple", []) => Some(self.alloc(Object::Tuple(Vec::new()))?),
            ("builtins", "set", []) => Some(self.alloc(Object::Set(Vec::new()))?),
            ("builtins", "frozenset", []) => Some(self.alloc(Object::FrozenSet(Vec::new()))?),
            ("builtins", kind @ ("list" | "tuple" | "set" | "frozenset"), [from]) => match self.items_of(*from) {
                Some(items) => Some(self.alloc(match kind {
                    "list" => Object::List(items),
                    "tuple" => Object::Tuple(items),
                    "set" => Object::Set(items),
                    _ => Object::FrozenSet(items),
                })?),
                None => None,
            },
            ("builtins", "bytes" | "bytearray", []) => Some(self.alloc(Object::Bytes(Vec::new()))?),
            // How Python 3 pickles `bytes` with protocols below 3.
            ("_codecs", "encode", [text, encoding]) => match (&self.objects[*text], &self.objects[*encoding]) {
                (Object::Str(t), Object::Str(e)) if matches!(e.as_str(), "latin1" | "latin-1" | "iso-8859-1") => {
                    match t.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect() {
                        Some(bytes) => Some(self.alloc(Object::Bytes(bytes))?),
                        None => return self.fail("_codecs.encode: not latin-1 text"),
                    }
                }
                _ => None,
            },
            _ => None,
        };
        Ok(made)
    }

    /// `(key, value)` pairs of a dict, or of a sequence of 2-item sequences (how Python 2
    /// pickled `OrderedDict`).
    fn pairs_of(&self, id: Id) -> Option<Vec<(Id, Id)>> {
        match &self.objects[id] {
            Object::Dict(d) => Some(d.entries.clone()),
            Object::List(v) | Object::Tuple(v) => v
                .iter()
                .map(|&pair| match &self.objects[pair] {
                    Object::List(kv) | Object::Tuple(kv) if kv.len() == 2 => Some((kv[0], kv[1])),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    // --- the loop -------------------------------------------------------------------------

    fn run(mut self) -> Step<Pickle> {
        loop {
            self.at = self.pos;
            let op = self.byte()?;
            if op == STOP {
                let root = self.pop()?;
                return Ok(Pickle { objects: self.objects, root, consumed: self.pos });
            }
            self.step(op)?;
        }
    }

    fn step(&mut self, op: u8) -> Step<()> {
        match op {
            PROTO => {
                let version = self.byte()?;
                if version > 5 {
                    return self.fail(format!("unsupported pickle protocol {version}"));
                }
            }
            FRAME => {
                // A length hint for buffered readers; the whole input is in memory already.
                self.take(8)?;
            }

            // Constants.
            NONE => self.push(Object::None)?,
            NEWTRUE => self.push(Object::Bool(true))?,
            NEWFALSE => self.push(Object::Bool(false))?,
            BININT => {
                let v = i32::from_le_bytes(self.array()?);
                self.push(Object::Int(v.into()))?;
            }
            BININT1 => {
                let v = self.byte()?;
                self.push(Object::Int(v.into()))?;
            }
            BININT2 => {
                let v = u16::from_le_bytes(self.array()?);
                self.push(Object::Int(v.into()))?;
            }
            LONG1 => {
                let n = self.byte()?;
                let n = self.length(n.into())?;
                let bytes = self.take(n)?;
                self.push(long_from_bytes(bytes))?;
            }
            LONG4 => {
                let n = i32::from_le_bytes(self.array()?);
                if n < 0 {
                    return self.fail("LONG4 with a negative length");
                }
                let n = self.length(n as u64)?;
                let bytes = self.take(n)?;
                self.push(long_from_bytes(bytes))?;
            }
            INT => {
                let line = self.line_str()?;
                let value = match line {
                    "01" => Object::Bool(true),
                    "00" => Object::Bool(false),
                    text => match parse_decimal(text) {
                        Some(i) => Object::Int(i),
                        None => return self.fail(format!("bad INT argument {}", short_repr(text))),
                    },
                };
                self.push(value)?;
            }
            LONG => {
                let line = self.line_str()?;
                let text = line.strip_suffix('L').unwrap_or(line);
                match parse_decimal(text) {
                    Some(i) => self.push(Object::Int(i))?,
                    None => return self.fail(format!("bad LONG argument {}", short_repr(line))),
                }
            }
            BINFLOAT => {
                let v = f64::from_be_bytes(self.array()?);
                self.push(Object::Float(v))?;
            }
            FLOAT => {
                let line = self.line_str()?;
                match parse_float(line) {
                    Some(f) => self.push(Object::Float(f))?,
                    None => return self.fail(format!("bad FLOAT argument {}", short_repr(line))),
                }
            }

            // Strings and bytes.
            BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 => {
                let n = match op {
                    SHORT_BINUNICODE => u64::from(self.byte()?),
                    BINUNICODE => u64::from(u32::from_le_bytes(self.array()?)),
                    _ => u64::from_le_bytes(self.array()?),
                };
                let n = self.length(n)?;
                let bytes = self.take(n)?;
                match std::str::from_utf8(bytes) {
                    Ok(s) => self.push(Object::Str(s.to_string()))?,
                    Err(_) => return self.fail("string is not valid UTF-8"),
                }
            }
            UNICODE => {
                let line = self.line()?;
                match decode_raw_unicode_escape(line) {
                    Some(s) => self.push(Object::Str(s))?,
                    None => return self.fail("bad UNICODE argument"),
                }
            }
            BINSTRING | SHORT_BINSTRING => {
                let n = if op == SHORT_BINSTRING {
                    u64::from(self.byte()?)
                } else {
                    let n = i32::from_le_bytes(self.array()?);
                    if n < 0 {
                        return self.fail("BINSTRING with a negative length");
                    }
                    n as u64
                };
                let n = self.length(n)?;
                let bytes = self.take(n)?;
                self.push(Self::text_or_bytes(bytes))?;
            }
            STRING => {
                let line = self.line()?;
                match decode_string_literal(line) {
                    Some(bytes) => self.push(Self::text_or_bytes(&bytes))?,
                    None => return self.fail("bad STRING argument"),
                }
            }
            BINBYTES | SHORT_BINBYTES | BINBYTES8 | BYTEARRAY8 => {
                let n = match op {
                    SHORT_BINBYTES => u64::from(self.byte()?),
                    BINBYTES => u64::from(u32::from_le_bytes(self.array()?)),
                    _ => u64::from_le_bytes(self.array()?),
                };
                let n = self.length(n)?;
                let bytes = self.take(n)?.to_vec();
                self.push(Object::Bytes(bytes))?;
            }
            NEXT_BUFFER | READONLY_BUFFER => {
                return self.fail("out-of-band buffers (pickle protocol 5) are not supported");
            }

            // Containers.
            MARK => self.marks.push(self.stack.len()),
            EMPTY_TUPLE => self.push(Object::Tuple(Vec::new()))?,
            EMPTY_LIST => self.push(Object::List(Vec::new()))?,
            EMPTY_DICT => self.push(Object::Dict(Dict::default()))?,
            EMPTY_SET => self.push(Object::Set(Vec::new()))?,
            TUPLE => {
                let items = self.pop_mark()?;
                self.push(Object::Tuple(items))?;
            }
            TUPLE1 | TUPLE2 | TUPLE3 => {
                let n = usize::from(op - TUPLE1) + 1;
                if self.stack.len() < self.floor() + n {
                    return self.fail("stack underflow");
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Object::Tuple(items))?;
            }
            LIST => {
                let items = self.pop_mark()?;
                self.push(Object::List(items))?;
            }
            FROZENSET => {
                let items = self.pop_mark()?;
                self.push(Object::FrozenSet(items))?;
            }
            DICT => {
                let items = self.pop_mark()?;
                if items.len() % 2 != 0 {
                    return self.fail("DICT with an odd number of items");
                }
                let pairs = items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect();
                let dict = self.new_dict(pairs)?;
                self.stack.push(dict);
            }
            SETITEM => {
                let value = self.pop()?;
                let key = self.pop()?;
                let dict = self.top()?;
                self.dict_insert(dict, key, value)?;
            }
            SETITEMS => {
                let items = self.pop_mark()?;
                if items.len() % 2 != 0 {
                    return self.fail("SETITEMS with an odd number of items");
                }
                let dict = self.top()?;
                for kv in items.chunks_exact(2) {
                    self.dict_insert(dict, kv[0], kv[1])?;
                }
            }
            APPEND => {
                let value = self.pop()?;
                let list = self.top()?;
                self.extend(list, vec![value], "APPEND")?;
            }
            APPENDS => {
                let items = self.pop_mark()?;
                let list = self.top()?;
                self.extend(list, items, "APPENDS")?;
            }
            ADDITEMS => {
                let items = self.pop_mark()?;
                let set = self.top()?;
                match &mut self.objects[set] {
                    Object::Set(v) => v.extend(items),
                    Object::Call(call) => call.appended.extend(items),
                    _ => {
                        let what = self.describe(set);
                        return self.fail(format!("ADDITEMS on a {what}"));
                    }
                }
            }

            // Stack manipulation.
            POP => {
                if self.stack.len() > self.floor() {
                    self.stack.pop();
                } else {
                    self.pop_mark()?;
                }
            }
            POP_MARK => {
                self.pop_mark()?;
            }
            DUP => {
                let top = self.top()?;
                self.stack.push(top);
            }

            // Memo.
            BINPUT => {
                let i = self.byte()?;
                self.memo_put(i.into())?;
            }
            LONG_BINPUT => {
                let i = u32::from_le_bytes(self.array()?);
                self.memo_put(i.into())?;
            }
            PUT => {
                let line = self.line_str()?;
                match line.parse::<u64>() {
                    Ok(i) => self.memo_put(i)?,
                    Err(_) => return self.fail("bad PUT argument"),
                }
            }
            MEMOIZE => {
                let i = self.memo.len() as u64;
                self.memo_put(i)?;
            }
            BINGET => {
                let i = self.byte()?;
                self.memo_get(i.into())?;
            }
            LONG_BINGET => {
                let i = u32::from_le_bytes(self.array()?);
                self.memo_get(i.into())?;
            }
            GET => {
                let line = self.line_str()?;
                match line.parse::<u64>() {
                    Ok(i) => self.memo_get(i)?,
                    Err(_) => return self.fail("bad GET argument"),
                }
            }

            // Globals and calls.
            GLOBAL => {
                let module = self.line_str()?;
                let name = self.line_str()?;
                self.global(module, name)?;
            }
            STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (&self.objects[module], &self.objects[name]) {
                    (Object::Str(m), Object::Str(n)) => {
                        let (m, n) = (m.clone(), n.clone());
                        self.global(&m, &n)?;
                    }
                    _ => return self.fail("STACK_GLOBAL needs two strings"),
                }
            }
            REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let made = self.call(callable, args, None, false)?;
                self.stack.push(made);
            }
            NEWOBJ => {
                let args = self.pop()?;
                let class = self.pop()?;
                let made = self.call(class, args, None, true)?;
                self.stack.push(made);
            }
            NEWOBJ_EX => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let class = self.pop()?;
                let kwargs = match &self.objects[kwargs] {
                    Object::Dict(d) if d.is_empty() => None,
                    _ => Some(kwargs),
                };
                let made = self.call(class, args, kwargs, true)?;
                self.stack.push(made);
            }
            INST => {
                let module = self.line_str()?;
                let name = self.line_str()?;
                let args = self.pop_mark()?;
                self.global(module, name)?;
                let class = self.stack.pop().expect("just pushed");
                let args = self.alloc(Object::Tuple(args))?;
                let made = self.call(class, args, None, false)?;
                self.stack.push(made);
            }
            OBJ => {
                let mut items = self.pop_mark()?;
                if items.is_empty() {
                    return self.fail("OBJ without a class");
                }
                let class = items.remove(0);
                let args = self.alloc(Object::Tuple(items))?;
                let made = self.call(class, args, None, false)?;
                self.stack.push(made);
            }
            BUILD => {
                let state = self.pop()?;
                let target = self.top()?;
                // Only lazy objects keep their state; the attributes of a dict (the
                // `_metadata` of a state dict, for instance) are of no use here.
                if let Object::Call(call) = &mut self.objects[target] {
                    call.state = Some(state);
                }
            }
            BINPERSID => {
                let pid = self.pop()?;
                self.push(Object::Persistent(pid))?;
            }
            PERSID => {
                let line = self.line()?;
                let pid = self.alloc(Self::text_or_bytes(line))?;
                self.push(Object::Persistent(pid))?;
            }
            EXT1 | EXT2 | EXT4 => return self.fail("extension registry opcodes are not supported"),
            other => return self.fail(format!("unknown opcode 0x{other:02x}")),
        }
        Ok(())
    }

    fn extend(&mut self, target: Id, items: Vec<Id>, op: &str) -> Step<()> {
        match &mut self.objects[target] {
            Object::List(v) => v.extend(items),
            Object::Call(call) => call.appended.extend(items),
            _ => {
                let what = self.describe(target);
                return self.fail(format!("{op} on a {what}"));
            }
        }
        Ok(())
    }
}

/// The integer of `LONG1`/`LONG4`: little-endian two's complement.
fn long_from_bytes(bytes: &[u8]) -> Object {
    if bytes.len() > 16 {
        return Object::BigInt(bytes.to_vec());
    }
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let mut buf = if negative { [0xffu8; 16] } else { [0u8; 16] };
    buf[..bytes.len()].copy_from_slice(bytes);
    Object::Int(i128::from_le_bytes(buf))
}

fn parse_decimal(text: &str) -> Option<i128> {
    let text = text.trim();
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_float(text: &str) -> Option<f64> {
    match text.trim() {
        "nan" => Some(f64::NAN),
        "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        t => t.parse().ok(),
    }
}

/// Python's `raw-unicode-escape`: Latin-1 bytes with `\uXXXX` and `\UXXXXXXXX` escapes.
fn decode_raw_unicode_escape(bytes: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' && i + 1 < bytes.len() && matches!(bytes[i + 1], b'u' | b'U') {
            let n = if bytes[i + 1] == b'u' { 4 } else { 8 };
            let hex = bytes.get(i + 2..i + 2 + n)?;
            let code = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(char::from_u32(code)?);
            i += 2 + n;
        } else {
            out.push(char::from(b));
            i += 1;
        }
    }
    Some(out)
}

/// The argument of `STRING`: a quoted Python 2 string literal with backslash escapes.
fn decode_string_literal(line: &[u8]) -> Option<Vec<u8>> {
    let (&first, rest) = line.split_first()?;
    if !matches!(first, b'\'' | b'"') {
        return None;
    }
    let body = rest.strip_suffix(&[first])?;
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let e = *body.get(i)?;
        i += 1;
        match e {
            b'\n' => {}
            b'\\' | b'\'' | b'"' => out.push(e),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'x' => {
                let hex = body.get(i..i + 2)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            b'0'..=b'7' => {
                let mut value = u32::from(e - b'0');
                for _ in 0..2 {
                    match body.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((value & 0xff) as u8);
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Pickle {
        parse(bytes, &Limits::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `X` + length + UTF-8.
    fn binunicode(s: &str) -> Vec<u8> {
        let mut v = vec![BINUNICODE];
        v.extend_from_slice(&(s.len() as u32).to_le_bytes());
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn memoised_dict_filled_later_is_shared() {
        // d = {}; memo[0] = d; outer = [d, d]; d["a"] = 1 after the list was built.
        let mut p = vec![PROTO, 2, EMPTY_DICT, BINPUT, 0, EMPTY_LIST, BINPUT, 1];
        p.extend([MARK, BINGET, 0, BINGET, 0, APPENDS]);
        p.extend([BINGET, 0]);
        p.extend(binunicode("a"));
        p.extend([BININT1, 1, SETITEM, POP, STOP]);
        let pk = run(&p);
        let items = pk.as_seq(pk.root).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], items[1], "both list items are the same dict");
        let d = pk.as_dict(items[0]).unwrap();
        assert_eq!(d.len(), 1, "the dict was filled after being appended");
        assert_eq!(pk.as_int(pk.dict_get(d, "a").unwrap()), Some(1));
    }

    #[test]
    fn mark_setitems_keeps_order_and_replaces_duplicates() {
        let mut p = vec![PROTO, 2, EMPTY_DICT, MARK];
        for (k, v) in [("z", 1u8), ("a", 2), ("m", 3), ("a", 4)] {
            p.extend(binunicode(k));
            p.extend([BININT1, v]);
        }
        p.extend([SETITEMS, STOP]);
        let pk = run(&p);
        let d = pk.as_dict(pk.root).unwrap();
        let got: Vec<(String, i128)> =
            d.entries().iter().map(|&(k, v)| (pk.as_str(k).unwrap().to_string(), pk.as_int(v).unwrap())).collect();
        assert_eq!(got, [("z".into(), 1), ("a".into(), 4), ("m".into(), 3)]);
    }

    #[test]
    fn long1_negative_and_big_numbers() {
        // -1, -256, 255 (needs a sign byte), and PyTorch's 10-byte magic number.
        let mut p = vec![PROTO, 2, MARK];
        p.extend([LONG1, 1, 0xff]);
        p.extend([LONG1, 2, 0x00, 0xff]);
        p.extend([LONG1, 2, 0xff, 0x00]);
        p.extend([LONG1, 0]);
        p.extend([LONG1, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
        p.extend([LONG4, 1, 0, 0, 0, 0x80]);
        p.extend([TUPLE, STOP]);
        let pk = run(&p);
        let got: Vec<i128> = pk.as_seq(pk.root).unwrap().iter().map(|&i| pk.as_int(i).unwrap()).collect();
        assert_eq!(got, [-1, -256, 255, 0, 0x1950a86a20f9469cfc6c, -128]);
    }

    #[test]
    fn ordered_dict_reduce_then_setitems_and_build() {
        let mut p = vec![PROTO, 2, GLOBAL];
        p.extend(b"collections\nOrderedDict\n");
        p.extend([EMPTY_TUPLE, REDUCE, MARK]);
        p.extend(binunicode("w"));
        p.extend([NONE, SETITEMS, EMPTY_DICT]);
        p.extend(binunicode("_metadata"));
        p.extend([EMPTY_DICT, SETITEM, BUILD, STOP]);
        let pk = run(&p);
        let d = pk.as_dict(pk.root).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(pk.get(pk.dict_get(d, "w").unwrap()), &Object::None);
    }

    #[test]
    fn python2_ordered_dict_of_pairs_and_binstring() {
        // OrderedDict([['a', 1], ['b', 2]]) with Python 2 byte strings.
        let mut p = vec![PROTO, 2, GLOBAL];
        p.extend(b"collections\nOrderedDict\n");
        p.extend([MARK, EMPTY_LIST, MARK, EMPTY_LIST, MARK, SHORT_BINSTRING, 1, b'a']);
        p.extend([BININT1, 1, APPENDS, EMPTY_LIST, MARK, SHORT_BINSTRING, 1, b'b', BININT1, 2]);
        p.extend([APPENDS, APPENDS, TUPLE, REDUCE, STOP]);
        let pk = run(&p);
        let d = pk.as_dict(pk.root).unwrap();
        let keys: Vec<&str> = d.entries().iter().map(|&(k, _)| pk.as_str(k).unwrap()).collect();
        assert_eq!(keys, ["a", "b"]);
    }

    #[test]
    fn unknown_reduce_is_lazy_and_persistent_ids_are_kept() {
        let mut p = vec![PROTO, 2, GLOBAL];
        p.extend(b"torch._utils\n_rebuild_tensor_v2\n");
        p.extend([MARK]);
        p.extend(binunicode("storage"));
        p.extend([GLOBAL]);
        p.extend(b"torch\nFloatStorage\n");
        p.extend([TUPLE, BINPERSID, BININT1, 0, TUPLE2, REDUCE, STOP]);
        let pk = run(&p);
        let Object::Call(call) = pk.root() else { panic!("{:?}", pk.root()) };
        assert_eq!(pk.as_global(call.callable), Some(("torch._utils", "_rebuild_tensor_v2")));
        let args = pk.as_seq(call.args).unwrap();
        let Object::Persistent(pid) = pk.get(args[0]) else { panic!() };
        let pid = pk.as_seq(*pid).unwrap();
        assert_eq!(pk.as_str(pid[0]), Some("storage"));
        assert_eq!(pk.as_global(pid[1]), Some(("torch", "FloatStorage")));
    }

    #[test]
    fn protocol_4_frame_memoize_stack_global() {
        let mut p = vec![PROTO, 4, FRAME, 30, 0, 0, 0, 0, 0, 0, 0];
        p.extend([SHORT_BINUNICODE, 11]);
        p.extend(b"collections");
        p.extend([MEMOIZE, SHORT_BINUNICODE, 11]);
        p.extend(b"OrderedDict");
        p.extend([MEMOIZE, STACK_GLOBAL, MEMOIZE, EMPTY_TUPLE, REDUCE, MEMOIZE, BINGET, 0, POP]);
        p.extend([STOP]);
        let pk = run(&p);
        assert!(pk.as_dict(pk.root).is_some());
        assert_eq!(pk.consumed, p.len());
    }

    #[test]
    fn protocol_0_text_opcodes() {
        let p = b"(dp0\nS'ke\\'y'\np1\nI42\nsVcaf\\u00e9\np2\nL-12345678901234567890L\nsS'f'\nF0.5\nsI01\nI00\ns.";
        let pk = run(p);
        let d = pk.as_dict(pk.root).unwrap();
        assert_eq!(pk.as_int(pk.dict_get(d, "ke'y").unwrap()), Some(42));
        assert_eq!(pk.as_int(pk.dict_get(d, "café").unwrap()), Some(-12345678901234567890));
        assert_eq!(pk.get(pk.dict_get(d, "f").unwrap()), &Object::Float(0.5));
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn stops_at_stop_and_reports_consumed() {
        let p = [PROTO, 2, BININT1, 7, STOP, 0xde, 0xad];
        let pk = run(&p);
        assert_eq!(pk.consumed, 5);
        assert_eq!(pk.as_int(pk.root), Some(7));
    }

    #[test]
    fn errors_never_panics() {
        let cases: &[&[u8]] = &[
            b"",
            &[PROTO],
            &[PROTO, 2, BINUNICODE, 0xff, 0xff, 0xff, 0xff],
            &[PROTO, 2, BINUNICODE8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[LONG4, 0xff, 0xff, 0xff, 0x7f],
            &[LONG4, 0xff, 0xff, 0xff, 0xff],
            &[BINGET, 3, STOP],
            &[SETITEMS, STOP],
            &[MARK, BININT1, 1, SETITEMS, STOP],
            &[EMPTY_LIST, BININT1, 1, SETITEM, STOP],
            &[STOP],
            &[TUPLE3, STOP],
            &[MARK, TUPLE1, STOP],
            &[PROTO, 9],
            &[b'I', b'x', b'\n', STOP],
            &[0xff],
            &[EXT1, 1],
        ];
        for case in cases {
            assert!(parse(case, &Limits::default()).is_err(), "{case:?}");
        }
        assert_eq!(parse(&[PROTO, 2, NONE], &Limits::default()).err(), Some(PickleError::Truncated(3)));
    }

    #[test]
    fn object_limit() {
        let mut p = vec![MARK];
        p.extend(std::iter::repeat_n(NONE, 100));
        p.extend([LIST, STOP]);
        assert!(parse(&p, &Limits { max_objects: 50 }).is_err());
        assert!(parse(&p, &Limits { max_objects: 101 }).is_ok());
    }

    #[test]
    fn pseudo_random_inputs_do_not_panic() {
        // A xorshift generator: a cheap stand-in for the fuzzer.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet: Vec<u8> =
            (0x80..=0x98).chain(b"()0-2FIJKLMNPQRSTUVXabcdeghijlopqrstu}]G.BC".iter().copied()).collect();
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 3 == 0 {
                        (r >> 8) as u8
                    } else {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    }
                })
                .collect();
            let _ = parse(&bytes, &Limits::default());
        }
    }
}
