//! How a `net/http.Header` (a `map[string][]string`) is laid out in memory, for the programs
//! that look a traceparent up in one (`bpf/include/traceparent.h`): the server in a request it
//! received, the client in one it is about to send.

use goinfo::GoBinary;
use offsets::FieldOffset;

use crate::plan::offset_of;

/// An instrumentation's fields, then Request.Header and the map layouts it is read through
/// (buckets before Go 1.24, swiss tables after). All optional: without them no header is read.
macro_rules! with_header_fields {
    ($($field:expr),* $(,)?) => {
        &[
            $($field,)*
            FieldSpec::std("net/http.Request", "Header", false),
            FieldSpec::std("runtime.hmap", "B", false),
            FieldSpec::std("runtime.hmap", "buckets", false),
            FieldSpec::std("internal/runtime/maps.Map", "dirPtr", false),
            FieldSpec::std("internal/runtime/maps.Map", "dirLen", false),
            FieldSpec::std("internal/runtime/maps.table", "groups", false),
            FieldSpec::std("internal/runtime/maps.groupsReference", "data", false),
            FieldSpec::std("internal/runtime/maps.groupsReference", "lengthMask", false),
        ]
    };
}
pub(super) use with_header_fields;

/// Sets traceparent.h's constants in a program's rodata from a `HeaderMap`.
macro_rules! configure_header_map {
    ($ro:expr, $map:expr) => {
        if let Some(map) = $map {
            use $crate::instrumentations::net_http::header_map::Layout;
            $ro.off_req_header = map.header;
            match map.layout {
                Layout::Buckets { b, buckets } => {
                    $ro.map_layout = 1;
                    ($ro.off_hmap_b, $ro.off_hmap_buckets) = (b, buckets);
                }
                Layout::Swiss { dir_ptr, dir_len, groups, data, length_mask } => {
                    $ro.map_layout = 2;
                    ($ro.off_swiss_dir_ptr, $ro.off_swiss_dir_len) = (dir_ptr, dir_len);
                    $ro.off_table_groups = groups;
                    ($ro.off_groups_data, $ro.off_groups_length_mask) = (data, length_mask);
                }
            }
        }
    };
}
pub(super) use configure_header_map;

/// Where Request.Header is and how its map is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderMap {
    pub header: u64,
    pub layout: Layout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// runtime.hmap: B and buckets.
    Buckets { b: u64, buckets: u64 },
    /// internal/runtime/maps: Map.dirPtr, Map.dirLen, table.groups, groupsReference.data and
    /// .lengthMask.
    Swiss { dir_ptr: u64, dir_len: u64, groups: u64, data: u64, length_mask: u64 },
}

/// None when a field is missing: headers are then not read.
pub(crate) fn header_map(bin: &GoBinary, fields: &[FieldOffset]) -> Option<HeaderMap> {
    let f = |s, f| offset_of(fields, s, f);
    let header = f("net/http.Request", "Header")?;
    let no_swiss = bin
        .build_info()
        .settings
        .iter()
        .any(|(k, v)| k == "GOEXPERIMENT" && v.split(',').any(|e| e == "noswissmap"));
    let swiss = || {
        Some(Layout::Swiss {
            dir_ptr: f("internal/runtime/maps.Map", "dirPtr")?,
            dir_len: f("internal/runtime/maps.Map", "dirLen")?,
            groups: f("internal/runtime/maps.table", "groups")?,
            data: f("internal/runtime/maps.groupsReference", "data")?,
            length_mask: f("internal/runtime/maps.groupsReference", "lengthMask")?,
        })
    };
    let buckets = || {
        Some(Layout::Buckets { b: f("runtime.hmap", "B")?, buckets: f("runtime.hmap", "buckets")? })
    };
    let layout = if no_swiss { buckets() } else { swiss().or_else(buckets) }?;
    Some(HeaderMap { header, layout })
}
