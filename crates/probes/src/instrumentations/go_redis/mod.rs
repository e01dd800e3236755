//! go-redis client spans, v9 (`github.com/redis/go-redis/v9`) and v8
//! (`github.com/go-redis/redis/v8`): a CLIENT span per command, and one per pipeline or
//! MULTI/EXEC transaction with its commands in `db.query.text` (`go_redis.bpf.c`).
//!
//! Every command a `Client`, `Conn` or `Tx` runs goes through `(*baseClient).process` (from
//! v9.23 through `processStartingAt`, which `process` calls), once per command whatever its
//! retries; every pipeline and transaction through `generalProcessPipeline` (v8, and v9 up to
//! v9.22) or `processPipeline` and `processTxPipeline` (v9.23 on). A transaction is a pipeline
//! whose commands go-redis wrapped in MULTI and EXEC. The server's address and the database
//! index come from the client's Options. Versions checked: `fixtures/redis/RESEARCH.md`.

pub mod event;
mod span;

use std::mem::MaybeUninit;

use goinfo::GoBinary;
use offsets::{FieldOffset, FieldSpec, Layouts};

use crate::instrumentations::goroutines;
use crate::load::{bpf_object, load};
use crate::plan::offset_of;
use crate::{
    AttachContext, Attached, Depends, Error, Events, FunctionPlan, Instrumentation, Plan, Report,
    Target,
};

bpf_object!("go_redis", GoRedisSkelBuilder);

/// One go-redis major version: its module and what gotel reads of it.
pub struct GoRedis {
    name: &'static str,
    module: &'static str,
    oldest: (u32, u32),
    kind: u32,
    fields: &'static [FieldSpec; 6],
}

/// The six fields the program reads, by their order in `fields`.
const CLIENT_OPT: usize = 0;
const OPT_NETWORK: usize = 1;
const OPT_ADDR: usize = 2;
const OPT_DB: usize = 3;
const CMD_ARGS: usize = 4;
const CMD_ERR: usize = 5;

macro_rules! go_redis_fields {
    ($module:literal) => {
        &[
            field($module, concat!($module, ".baseClient"), "opt"),
            field($module, concat!($module, ".Options"), "Network"),
            field($module, concat!($module, ".Options"), "Addr"),
            field($module, concat!($module, ".Options"), "DB"),
            field($module, concat!($module, ".baseCmd"), "args"),
            field($module, concat!($module, ".baseCmd"), "err"),
        ]
    };
}

const fn field(module: &'static str, s: &'static str, f: &'static str) -> FieldSpec {
    FieldSpec { module, struct_name: s, field: f, required: true }
}

pub static V9: GoRedis = GoRedis {
    name: "go-redis v9",
    module: "github.com/redis/go-redis/v9",
    oldest: (9, 0),
    kind: 6,
    fields: go_redis_fields!("github.com/redis/go-redis/v9"),
};

pub static V8: GoRedis = GoRedis {
    name: "go-redis v8",
    module: "github.com/go-redis/redis/v8",
    oldest: (8, 11),
    kind: 7,
    fields: go_redis_fields!("github.com/go-redis/redis/v8"),
};

/// The command function, by the names it has had (the first the binary has is probed). From
/// v9.23 `process` only calls `processStartingAt`, and the method value the hooks call
/// (`process-fm`) may inline it even where a `process` symbol is left: the callee is the one
/// every command reaches.
const COMMAND: &[&str] = &["(*baseClient).processStartingAt", "(*baseClient).process"];
/// The one function every pipeline and transaction goes through, where there is one...
const PIPELINE: &str = "(*baseClient).generalProcessPipeline";
/// ...else these two, for pipelines and transactions.
const PIPELINE_SPLIT: &[&str] =
    &["(*baseClient).processPipeline", "(*baseClient).processTxPipeline"];
/// The Error methods of a reply the server refused (and of redis.Nil), in `internal/proto`:
/// fun[0] of its `error` itab is one of them.
const REDIS_ERROR: &[&str] = &["(*RedisError).Error", "RedisError.Error"];

impl Instrumentation for GoRedis {
    fn name(&self) -> &'static str {
        self.name
    }

    fn target(&self) -> Target {
        Target::Module { path: self.module, oldest: self.oldest }
    }

    fn fields(&self) -> &'static [FieldSpec] {
        self.fields
    }

    fn depends(&self) -> Depends {
        Depends { requires: &[goroutines::NAME], ..Depends::default() }
    }

    fn plan(&self, bin: &GoBinary, layouts: &Layouts) -> Result<Box<dyn Plan>, String> {
        let m = self.module;
        let command = COMMAND
            .iter()
            .find_map(|f| FunctionPlan::new(bin, &format!("{m}.{f}")).ok())
            .ok_or_else(|| format!("{m}.{} is not in the binary", COMMAND[0]))?;
        let pipelines = match FunctionPlan::new(bin, &format!("{m}.{PIPELINE}")) {
            Ok(general) => vec![general],
            Err(_) => PIPELINE_SPLIT
                .iter()
                .filter_map(|f| FunctionPlan::new(bin, &format!("{m}.{f}")).ok())
                .collect(),
        };
        if pipelines.is_empty() {
            return Err(format!(
                "neither {m}.{PIPELINE} nor {m}.{} is in the binary",
                PIPELINE_SPLIT[0]
            ));
        }
        let redis_error: Vec<u64> = REDIS_ERROR
            .iter()
            .filter_map(|f| bin.function(&format!("{m}/internal/proto.{f}")).ok())
            .map(|f| f.address)
            .collect();
        if redis_error.is_empty() {
            // Without it redis.Nil, a key that is not there, would look like a failure.
            return Err(format!("{m}/internal/proto.{} is not in the binary", REDIS_ERROR[0]));
        }
        let fields = offsets::resolve(bin, layouts, self.fields)?;
        Ok(Box::new(GoRedisPlan { command, pipelines, redis_error, fields }))
    }

    fn events(&self) -> Option<Events> {
        Some(
            Events::of::<event::RedisEvent>(self.kind)
                .measured_in(&trace::metric::DB_CLIENT_OPERATION_DURATION),
        )
    }
}

#[derive(Debug)]
struct GoRedisPlan {
    command: FunctionPlan,
    pipelines: Vec<FunctionPlan>,
    /// Link-time addresses of the REDIS_ERROR methods the binary has.
    redis_error: Vec<u64>,
    fields: Vec<FieldOffset>,
}

impl Plan for GoRedisPlan {
    fn report(&self) -> Report<'_> {
        let functions = std::iter::once(&self.command).chain(&self.pipelines).collect();
        Report { note: None, functions, fields: &self.fields, calls: Vec::new() }
    }

    fn attach(&self, to: &AttachContext<'_>) -> Result<Attached, Error> {
        let offset = |i: usize| {
            offset_of(&self.fields, self.fields[i].spec.struct_name, self.fields[i].spec.field)
                .unwrap_or(0)
        };
        let placement = to.options.placement;
        let mut storage = MaybeUninit::uninit();
        let skel = load::<skel::GoRedisSkelBuilder>(&mut storage, to, |ro| {
            ro.off_client_opt = offset(CLIENT_OPT);
            ro.off_opt_network = offset(OPT_NETWORK);
            ro.off_opt_addr = offset(OPT_ADDR);
            ro.off_opt_db = offset(OPT_DB);
            ro.off_cmd_args = offset(CMD_ARGS);
            ro.off_cmd_err = offset(CMD_ERR);
            ro.entry_address[0] = self.command.entry_point(placement).1;
            for (slot, f) in ro.entry_address[1..].iter_mut().zip(&self.pipelines) {
                *slot = f.entry_point(placement).1;
            }
            for (slot, &address) in ro.redis_error_method.iter_mut().zip(&self.redis_error) {
                *slot = address;
            }
        })?;
        let p = &skel.progs;
        let mut attached = Attached::new(to);
        attached.function(
            &self.command,
            &p.redis_command_enter,
            &p.redis_return_multi,
            &p.redis_return_single,
        )?;
        for (f, enter) in
            self.pipelines.iter().zip([&p.redis_pipeline_enter, &p.redis_pipeline2_enter])
        {
            attached.function(f, enter, &p.redis_return_multi, &p.redis_return_single)?;
        }
        Ok(attached)
    }
}
