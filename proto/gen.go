// Package proto holds the .proto sources of logbackup's own messages; the
// generated Go code lives in proto/lbpb.
//
// Regenerate with `go generate ./proto` (needs protoc and
// protoc-gen-go v1.36.12: `apt-get install protobuf-compiler` and
// `go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12`).
// .ci/run checks that the committed code is what the generator writes.
package proto

//go:generate protoc --go_out=. --go_opt=module=logbackup/proto logbackup.proto
