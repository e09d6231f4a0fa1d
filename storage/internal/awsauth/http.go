package awsauth

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// maxBody bounds what is read of any answer: credentials documents are
// a few KiB.
const maxBody = 1 << 20

// defaultHTTPClient is used when Config.HTTPClient is nil. Each call also
// carries its own deadline; these bound a connection that stalls.
func defaultHTTPClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 proxyUnlessLinkLocal,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   5 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
			MaxIdleConns:          4,
			IdleConnTimeout:       30 * time.Second,
		},
		Timeout: time.Minute,
	}
}

// proxyUnlessLinkLocal is the environment's proxy, except for the
// instance metadata and container endpoints (169.254.x.x), which no
// proxy can reach on this host's behalf.
func proxyUnlessLinkLocal(req *http.Request) (*url.URL, error) {
	if ip := net.ParseIP(req.URL.Hostname()); ip != nil && ip.IsLinkLocalUnicast() {
		return nil, nil
	}
	return http.ProxyFromEnvironment(req)
}

// do sends req under ctx plus timeout and returns the status and (at most
// maxBody of) the body. A transport error is returned without the URL
// (*url.Error would add it, and a container URL may carry a token): the
// caller's Error says what was asked.
func do(ctx context.Context, client *http.Client, req *http.Request, timeout time.Duration) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := client.Do(req.WithContext(ctx))
	if err != nil {
		return 0, nil, transportError(ctx, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return resp.StatusCode, nil, transportError(ctx, err)
	}
	return resp.StatusCode, body, nil
}

// transportError strips *url.Error's URL, and reports a deadline or a
// cancellation as the context's error, so errors.Is finds it.
func transportError(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
