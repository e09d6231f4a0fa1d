package s3test

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// New serves on 127.0.0.1 with the given buckets created, for programs
// that are no test (the playground's nemesis); stop it with Close.
func New(buckets ...string) (*Server, error) {
	s := &Server{backend: s3mem.New()}
	for _, b := range buckets {
		if err := s.backend.CreateBucket(b); err != nil {
			return nil, fmt.Errorf("s3test: create bucket %s: %w", b, err)
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("s3test: listen: %w", err)
	}
	s.fake = gofakes3.New(s.backend).Server()
	s.endpoint = "http://" + lis.Addr().String()
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(lis) }() // returns http.ErrServerClosed on Close
	return s, nil
}

// Close stops a server made by New.
func (s *Server) Close() error {
	if err := s.srv.Close(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
