//! `gotel inspect`: what gotel sees in an executable, without privileges.

use std::fmt::Write;
use std::path::Path;

use goinfo::GoBinary;
use offsets::FieldOffset;
use probes::plan_all;

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
    let skipped = |w: &mut String, skip: &probes::Skip| {
        writeln!(w, "  {:<20} skipped: {}", skip.instrumentation, skip.reason)
    };
    match &plans.http_server {
        Ok(plan) => {
            writeln!(w, "  {:<20} applies", probes::http_server::NAME)?;
            functions(w, &plan.serve)?;
            fields(w, &plan.fields)?;
        }
        Err(skip) => skipped(w, skip)?,
    }
    match &plans.http_client {
        Ok(plan) => {
            writeln!(w, "  {:<20} applies", probes::http_client::NAME)?;
            functions(w, &plan.round_trip)?;
            fields(w, &plan.fields)?;
        }
        Err(skip) => skipped(w, skip)?,
    }
    match &plans.grpc_server {
        Ok(plan) => {
            writeln!(
                w,
                "  {:<20} applies (grpc {})",
                probes::grpc_server::NAME,
                plan.grpc_version
            )?;
            functions(w, &plan.handle_stream)?;
            functions(w, &plan.write_status)?;
            fields(w, &plan.fields)?;
        }
        Err(skip) => skipped(w, skip)?,
    }
    match &plans.grpc_client {
        Ok(plan) => {
            writeln!(
                w,
                "  {:<20} applies (grpc {})",
                probes::grpc_client::NAME,
                plan.grpc_version
            )?;
            functions(w, &plan.start)?;
            functions(w, &plan.new_stream)?;
            functions(w, &plan.finish)?;
            fields(w, &plan.fields)?;
        }
        Err(skip) => skipped(w, skip)?,
    }
    match &plans.goroutines {
        Ok(plan) => {
            writeln!(w, "  {:<20} applies (parents for client spans)", probes::goroutines::NAME)?;
            functions(w, &plan.newproc1)?;
        }
        Err(skip) => skipped(w, skip)?,
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
