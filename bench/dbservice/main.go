// dbservice is the db workload of the overhead benchmark (scripts/bench-http.py): GET /query
// runs one SELECT on PostgreSQL (database/sql, lib/pq) and one GET on Redis (go-redis v9).
// With -sdk it is instrumented by hand with the OpenTelemetry Go SDK and the usual wrappers
// (otelhttp, otelsql, redisotel; batch OTLP/HTTP export configured by the OTEL_* variables);
// without, it is the uninstrumented service that the baseline and gotel run. One binary, so
// every configuration runs the same handler.
package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/XSAM/otelsql"
	"github.com/lib/pq"
	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	dsn := flag.String("dsn", "postgres://gotel@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL")
	redisAddr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	sdk := flag.Bool("sdk", false, "instrument with the OpenTelemetry Go SDK")
	flag.Parse()

	var tp *sdktrace.TracerProvider
	var db *sql.DB
	var err error
	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr, PoolSize: 64})
	if *sdk {
		exporter, err := otlptracehttp.New(context.Background())
		if err != nil {
			log.Fatal(err)
		}
		tp = sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter))
		otel.SetTracerProvider(tp)
		otel.SetTextMapPropagator(propagation.TraceContext{})
		db, err = otelsql.Open("postgres", *dsn, otelsql.WithAttributes(attribute.String("db.system.name", "postgresql")))
		if err != nil {
			log.Fatal(err)
		}
		if err := redisotel.InstrumentTracing(rdb); err != nil {
			log.Fatal(err)
		}
	} else if db, err = sql.Open("postgres", *dsn); err != nil {
		log.Fatal(err)
	}
	_ = pq.Driver{} // lib/pq registers "postgres"
	db.SetMaxIdleConns(64)
	if err := rdb.Set(context.Background(), "user:1", "ada", 0).Err(); err != nil {
		log.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/query", func(w http.ResponseWriter, r *http.Request) {
		var one int
		if err := db.QueryRowContext(r.Context(), "SELECT 1 WHERE $1 > 0", 1).Scan(&one); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		name, err := rdb.Get(r.Context(), "user:1").Result()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, one, name)
	})
	var handler http.Handler = mux
	if *sdk {
		handler = otelhttp.NewHandler(mux, "server")
	}
	// On SIGTERM the spans still batched are exported before exit, so the benchmark can count
	// every span that reached the collector.
	server := &http.Server{Addr: *addr, Handler: handler}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	go func() {
		<-stop
		server.Shutdown(context.Background())
	}()
	if err := server.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	if tp != nil {
		if err := tp.Shutdown(context.Background()); err != nil {
			log.Fatal(err)
		}
	}
}
