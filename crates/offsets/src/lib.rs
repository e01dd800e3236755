//! Where gotel finds the offset of each struct field an instrumentation reads, in order of
//! trust: the executable's DWARF, then its Go runtime type descriptors (kept when stripped),
//! then the embedded offsets database (keyed by Go or module version).

pub mod db;
pub mod version;

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use goinfo::{GoBinary, ModuleVersion, StructLayouts, VersionSource};

pub use db::{Database, Lookup, STD};

/// A field an instrumentation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// `STD` for the standard library, else the module path that defines the struct.
    pub module: &'static str,
    /// As DWARF names it: "net/http.Request".
    pub struct_name: &'static str,
    pub field: &'static str,
    /// Without a required field the instrumentation is off; optional ones only enrich spans.
    pub required: bool,
}

impl FieldSpec {
    pub const fn std(struct_name: &'static str, field: &'static str, required: bool) -> Self {
        FieldSpec { module: STD, struct_name, field, required }
    }

    /// "net/http.Request.Method": the database's key.
    pub fn key(&self) -> String {
        format!("{}.{}", self.struct_name, self.field)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetSource {
    Dwarf,
    TypeDescriptor,
    /// The versions the database entry covers ("1.19.8 .. 1.27.3").
    Database {
        versions: String,
    },
}

impl std::fmt::Display for OffsetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OffsetSource::Dwarf => f.write_str("DWARF"),
            OffsetSource::TypeDescriptor => f.write_str("type descriptor"),
            OffsetSource::Database { versions } => write!(f, "offsets database, {versions}"),
        }
    }
}

/// One field, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldOffset {
    pub spec: FieldSpec,
    /// None: the field does not exist in this binary (or could not be found: see `source`).
    pub offset: Option<u64>,
    /// Who said so; None when nobody knew.
    pub source: Option<OffsetSource>,
}

static EMBEDDED: OnceLock<Result<Database, String>> = OnceLock::new();

/// The database compiled into gotel.
pub fn embedded() -> Result<&'static Database, &'static str> {
    EMBEDDED
        .get_or_init(|| {
            Database::from_json(include_str!("../data/offsets.json")).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(String::as_str)
}

/// What an executable itself says about the layout of a set of structs: DWARF, and type
/// descriptors for the structs DWARF does not describe. Read once per executable, for every
/// struct any instrumentation uses; each instrumentation then resolves its own fields.
#[derive(Debug, Default)]
pub struct Layouts {
    dwarf: StructLayouts,
    types: StructLayouts,
}

impl Layouts {
    pub fn load(bin: &GoBinary, specs: &[FieldSpec]) -> Self {
        let mut structs: Vec<&str> = specs.iter().map(|s| s.struct_name).collect();
        structs.sort_unstable();
        structs.dedup();
        let dwarf = bin.struct_layouts(&structs).unwrap_or_default();
        let missing: Vec<&str> =
            structs.iter().copied().filter(|s| !dwarf.contains_key(*s)).collect();
        let types = if missing.is_empty() {
            StructLayouts::new()
        } else {
            bin.struct_layouts_from_types(&missing).unwrap_or_default()
        };
        Layouts { dwarf, types }
    }

    /// What the binary itself says of the struct `struct_name` (field -> offset), and where
    /// it says it: DWARF first.
    fn describe(&self, struct_name: &str) -> Option<(&HashMap<String, u64>, OffsetSource)> {
        let dwarf = self.dwarf.get(struct_name).map(|f| (f, OffsetSource::Dwarf));
        dwarf.or_else(|| self.types.get(struct_name).map(|f| (f, OffsetSource::TypeDescriptor)))
    }
}

/// What is known of the version of a module a binary links.
enum Known {
    /// Stated: by buildinfo, or by a string the library compiles in.
    Version(ModuleVersion),
    /// Told by the struct layout: the database's versions it matches (ascending, never
    /// empty), of how many it has.
    Layout { versions: Vec<String>, of: usize },
}

fn known_version(bin: &GoBinary, layouts: &Layouts, module: &str) -> Result<Known, String> {
    let stated = bin.module_version(module);
    if stated.is_ok() || !bin.links_unlisted_module(module) {
        return stated.map(Known::Version);
    }
    let (versions, of) = versions_by_layout(layouts, module).map_err(|why| {
        format!("{module} is in the binary, but buildinfo lists no modules, it states no version, and {why}")
    })?;
    Ok(Known::Layout { versions, of })
}

/// The version of `module` the binary links: from buildinfo or a string the library compiles
/// in (`GoBinary::module_version`), else, in a build whose buildinfo lists no modules, from
/// its struct layouts: the database's versions whose offsets agree with every field of the
/// module the binary describes. Err says why none can be told.
pub fn module_version(
    bin: &GoBinary,
    layouts: &Layouts,
    module: &str,
) -> Result<ModuleVersion, String> {
    let (versions, of) = match known_version(bin, layouts, module)? {
        Known::Version(v) => return Ok(v),
        Known::Layout { versions, of } => (versions, of),
    };
    let (first, last) = (&versions[0], &versions[versions.len() - 1]);
    let matches = match versions.len() {
        1 => format!("{first} alone of the {of} versions in the offsets database"),
        n => format!("{first} .. {last}, {n} of the {of} versions in the offsets database"),
    };
    Ok(ModuleVersion { version: first.clone(), source: VersionSource::Layout(matches) })
}

/// The versions of `module` in the database, ascending, that the layouts match; and how many
/// it has.
fn versions_by_layout(layouts: &Layouts, module: &str) -> Result<(Vec<String>, usize), String> {
    let db = embedded().map_err(str::to_string)?;
    let Some(m) = db.modules.get(module) else {
        return Err("the offsets database has no versions to compare its layout with".into());
    };
    let observed: BTreeMap<String, Option<u64>> = m
        .fields
        .keys()
        .filter_map(|key| {
            let (struct_name, field) = key.rsplit_once('.')?;
            Some((key.clone(), layouts.describe(struct_name)?.0.get(field).copied()))
        })
        .collect();
    if observed.is_empty() {
        return Err("neither DWARF nor type descriptors describe its structs".into());
    }
    let versions = m.versions_matching(&observed);
    if versions.is_empty() {
        return Err(format!(
            "its struct layout ({} fields) matches none of the {} versions in the offsets database",
            observed.len(),
            m.versions.len()
        ));
    }
    Ok((versions, m.versions.len()))
}

/// Resolves every field, from `layouts` (loaded for at least these fields) or the database;
/// fails naming the first required field no source knows.
pub fn resolve(
    bin: &GoBinary,
    layouts: &Layouts,
    specs: &[FieldSpec],
) -> Result<Vec<FieldOffset>, String> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        // A struct the binary describes is authoritative for its fields, present or absent.
        let described = layouts
            .describe(spec.struct_name)
            .map(|(fields, source)| (fields.get(spec.field).copied(), source));
        let resolved = match described {
            Some((offset, source)) => FieldOffset { spec: *spec, offset, source: Some(source) },
            None => from_database(bin, layouts, spec)?,
        };
        if spec.required && resolved.offset.is_none() {
            return Err(match resolved.source {
                Some(source) => format!("{} does not exist here ({source})", spec.key()),
                None => format!("{}: offset unknown", spec.key()),
            });
        }
        out.push(resolved);
    }
    Ok(out)
}

fn from_database(
    bin: &GoBinary,
    layouts: &Layouts,
    spec: &FieldSpec,
) -> Result<FieldOffset, String> {
    let known = if spec.module == STD {
        let version = bin.build_info().go_version.clone();
        Some(Known::Version(ModuleVersion { version, source: VersionSource::BuildInfo }))
    } else {
        known_version(bin, layouts, spec.module).ok()
    };
    let unknown = |why: String| -> Result<FieldOffset, String> {
        if spec.required {
            Err(format!(
                "{}: not in DWARF or type descriptors, and the offsets database cannot say: {why}",
                spec.key()
            ))
        } else {
            Ok(FieldOffset { spec: *spec, offset: None, source: None })
        }
    };
    let Some(known) = known else {
        return unknown(format!("the binary records no version of {}", spec.module));
    };
    let db = match embedded() {
        Ok(db) => db,
        Err(e) => return unknown(e.to_string()),
    };
    let version = match known {
        Known::Version(v) => v.version,
        Known::Layout { versions, .. } => {
            // A version told by the layout is a set of versions: only what all of them agree
            // on is known.
            let (first, last) = (&versions[0], &versions[versions.len() - 1]);
            let Some(offset) =
                db.modules.get(spec.module).and_then(|m| m.agreed_offset(&versions, &spec.key()))
            else {
                return unknown(format!(
                    "the versions its layout matches ({first} .. {last}) disagree on it"
                ));
            };
            let versions = format!("{first} .. {last}, by the layout");
            return Ok(FieldOffset {
                spec: *spec,
                offset,
                source: Some(OffsetSource::Database { versions }),
            });
        }
    };
    match db.lookup(spec.module, &version, &spec.key()) {
        Lookup::Found { offset, from, to } => Ok(FieldOffset {
            spec: *spec,
            offset,
            source: Some(OffsetSource::Database { versions: format!("{from} .. {to}") }),
        }),
        Lookup::Unknown(why) => unknown(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_database_parses() {
        let db = embedded().unwrap();
        assert_eq!(db.schema, db::SCHEMA);
    }
}
