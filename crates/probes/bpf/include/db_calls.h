/* The database/sql call a goroutine is in, for client libraries that database/sql drives too:
 * pgx's stdlib driver runs every statement through pgx's own Query and Exec, and the span is
 * database/sql's, so pgx's probes make none while one is in flight. */
#pragma once

#include "gotel.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct goroutine_key);
	__type(value, u8);
} db_calls SEC(".maps");
