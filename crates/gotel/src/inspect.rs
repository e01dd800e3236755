//! `gotel inspect`: what gotel sees in an executable, without privileges.

use std::fmt::Write;
use std::path::Path;

use goinfo::{GoBinary, VersionSource};
use offsets::FieldOffset;
use probes::{plan_all, Target};

pub fn inspect(path: &Path) -> anyhow::Result<String> {
    let bin = GoBinary::open(path)?;
    let info = bin.build_info();
    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "{}", path.display())?;
    writeln!(w, "  Go version     {}", info.go_version)?;
    if let Some(m) = &info.main_module {
        writeln!(w, "  main module    {} {}", m.path, m.version)?;
    } else if !info.main_path.is_empty() {
        writeln!(w, "  main package   {}", info.main_path)?;
    }
    writeln!(w, "  modules        {}", if info.deps.is_empty() { "(none)" } else { "" })?;
    for m in &info.deps {
        match &m.replaced_by {
            Some(r) => writeln!(w, "    {} {} => {} {}", m.path, m.version, r.path, r.version)?,
            None => writeln!(w, "    {} {}", m.path, m.version)?,
        }
    }
    let symbols = format!("{} functions from {}", bin.function_count(), bin.symbol_source());
    writeln!(w, "  symbols        {symbols}")?;
    for prefix in bin.vendor_prefixes() {
        writeln!(w, "  vendored       {prefix}... (GOPATH mode: looked up by import path)")?;
    }

    writeln!(w, "\ninstrumentations")?;
    let plans = plan_all(&bin);
    let functions = |w: &mut String, f: &probes::FunctionPlan| -> std::fmt::Result {
        let e = &f.function;
        writeln!(
            w,
            "    entry   {} at {:#x} (file offset {:#x}, {} bytes)",
            e.name, e.address, e.file_offset, e.size
        )?;
        if let Some(jump) = f.stack_check {
            writeln!(
                w,
                "    check   stack-check jump at file offset {jump:#x} (cheap entry probe)"
            )?;
        }
        let rets: Vec<String> = f.return_offsets.iter().map(|o| format!("{o:#x}")).collect();
        writeln!(w, "    RETs    {} at file offsets {}", rets.len(), rets.join(" "))
    };
    let fields = |w: &mut String, fields: &[FieldOffset]| -> std::fmt::Result {
        for f in fields {
            writeln!(w, "    field   {}", field_line(f))?;
        }
        Ok(())
    };
    for planned in &plans {
        let name = planned.instrumentation.name();
        match &planned.plan {
            Ok(plan) => {
                let report = plan.report();
                match &report.note {
                    Some(note) => writeln!(w, "  {name:<20} applies ({note})")?,
                    None => writeln!(w, "  {name:<20} applies")?,
                }
                if let (Target::Module { path, .. }, Some(v)) =
                    (planned.instrumentation.target(), &planned.library)
                {
                    match v.source {
                        // A range of versions: the one used to compare is not the one built.
                        VersionSource::Layout(_) => {
                            writeln!(w, "    library {path} ({})", v.source)?
                        }
                        _ => writeln!(w, "    library {path} {} ({})", v.version, v.source)?,
                    }
                }
                for f in &report.functions {
                    functions(w, f)?;
                }
                for c in &report.calls {
                    for (call, after) in &c.sites {
                        writeln!(
                            w,
                            "    call    {} -> {} at file offset {call:#x}, returned at {after:#x}",
                            c.caller.name, c.callee
                        )?;
                    }
                }
                fields(w, report.fields)?;
            }
            Err(skip) => writeln!(w, "  {name:<20} skipped: {}", skip.reason)?,
        }
    }
    Ok(out)
}

fn field_line(f: &FieldOffset) -> String {
    let name = f.spec.key();
    match (f.offset, &f.source) {
        (Some(off), Some(src)) => format!("{name:<46} {off:>4}  ({src})"),
        (None, Some(src)) => format!("{name:<46} absent ({src})"),
        (_, None) => format!("{name:<46} unknown (optional: spans lack what it gives)"),
    }
}
