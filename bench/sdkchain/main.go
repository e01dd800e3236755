// sdkchain is the chain fixture's /one endpoint instrumented by hand with the OpenTelemetry Go
// SDK (otelhttp on server and client, batch OTLP/HTTP export): configuration 3 of the overhead
// benchmark (scripts/bench-http.py). Configured by the standard OTEL_* variables.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	next := flag.String("next", "", "base URL of the next service")
	flag.Parse()

	exporter, err := otlptracehttp.New(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})

	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 256 // as the chain fixture: no connection churn under load
	client := &http.Client{Transport: otelhttp.NewTransport(transport)}
	mux := http.NewServeMux()
	mux.HandleFunc("/one", func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), "GET", *next+"/c", nil)
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Fprintln(w, "one:", resp.Status)
	})
	mux.HandleFunc("/c", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "c")
	})
	// On SIGTERM the spans still batched are exported before exit, so the benchmark can count
	// every span that reached the collector.
	server := &http.Server{Addr: *addr, Handler: otelhttp.NewHandler(mux, "server")}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	go func() {
		<-stop
		server.Shutdown(context.Background())
	}()
	if err := server.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	if err := tp.Shutdown(context.Background()); err != nil {
		log.Fatal(err)
	}
}
