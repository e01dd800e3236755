// The program whose sections seed the binary fuzz targets (fuzz/make-seeds.py): small, with
// one named struct that a type descriptor, DWARF and an interface conversion all describe.
package main

type T struct {
	A int
	B string
	C *T
}

var sink any

func main() { sink = &T{A: 1} }
