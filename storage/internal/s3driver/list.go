package s3driver

import (
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"time"

	"gocloud.dev/blob/driver"
)

// maxPageSize is S3's own maximum and default.
const maxPageSize = 1000

// maxListBody bounds a listing's answer: 1,000 keys of up to 1 KiB each
// with their attributes stay well under it.
const maxListBody = 8 << 20

// ListPaged is ListObjectsV2. Keys come back URL-encoded
// (encoding-type=url), so a key with characters XML 1.0 cannot carry
// still lists as itself.
func (b *bucket) ListPaged(ctx context.Context, opts *driver.ListOptions) (*driver.ListPage, error) {
	q := url.Values{}
	q.Set("list-type", "2")
	q.Set("encoding-type", "url")
	if opts.Prefix != "" {
		q.Set("prefix", opts.Prefix)
	}
	if opts.Delimiter != "" {
		q.Set("delimiter", opts.Delimiter)
	}
	size := opts.PageSize
	if size <= 0 || size > maxPageSize {
		size = maxPageSize
	}
	q.Set("max-keys", strconv.Itoa(size))
	if len(opts.PageToken) > 0 {
		q.Set("continuation-token", string(opts.PageToken))
	}
	if opts.BeforeList != nil {
		if err := opts.BeforeList(noAs); err != nil {
			return nil, err
		}
	}
	resp, err := b.send(ctx, request{method: http.MethodGet, u: b.bucketURL(q)}, http.StatusOK)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxListBody))
	if err != nil {
		return nil, &SendError{Method: http.MethodGet, Err: fmt.Errorf("read a list page: %w", err)}
	}
	var page struct {
		EncodingType          string `xml:"EncodingType"`
		IsTruncated           bool   `xml:"IsTruncated"`
		NextContinuationToken string `xml:"NextContinuationToken"`
		Contents              []struct {
			Key          string `xml:"Key"`
			LastModified string `xml:"LastModified"`
			Size         int64  `xml:"Size"`
		} `xml:"Contents"`
		CommonPrefixes []struct {
			Prefix string `xml:"Prefix"`
		} `xml:"CommonPrefixes"`
	}
	if err := xml.Unmarshal(body, &page); err != nil {
		return nil, fmt.Errorf("s3: list page: %w", err)
	}
	// Only a server that says it encoded the keys had them decoded: one
	// that ignores encoding-type sends them as they are, and a key with
	// "%" or "+" in it would otherwise list as another.
	decode := func(s string) (string, error) { return s, nil }
	if page.EncodingType == "url" {
		decode = url.QueryUnescape
	}
	out := &driver.ListPage{Objects: make([]*driver.ListObject, 0, len(page.Contents)+len(page.CommonPrefixes))}
	for _, c := range page.Contents {
		key, err := decode(c.Key)
		if err != nil {
			return nil, fmt.Errorf("s3: list page: key %q: %w", c.Key, err)
		}
		// No MD5 from the ETag here: a listing does not say whether the
		// object is KMS-encrypted, whose ETag is none.
		o := &driver.ListObject{Key: key, Size: c.Size, AsFunc: noAs}
		if t, err := time.Parse(time.RFC3339Nano, c.LastModified); err == nil {
			o.ModTime = t
		}
		out.Objects = append(out.Objects, o)
	}
	for _, p := range page.CommonPrefixes {
		prefix, err := decode(p.Prefix)
		if err != nil {
			return nil, fmt.Errorf("s3: list page: prefix %q: %w", p.Prefix, err)
		}
		out.Objects = append(out.Objects, &driver.ListObject{Key: prefix, IsDir: true, AsFunc: noAs})
	}
	// Contents and prefixes come as two sorted lists; the portable type
	// wants one, in key order.
	sort.Slice(out.Objects, func(i, j int) bool { return out.Objects[i].Key < out.Objects[j].Key })
	if page.IsTruncated {
		if page.NextContinuationToken == "" {
			return nil, fmt.Errorf("s3: list page: truncated without a continuation token")
		}
		out.NextPageToken = []byte(page.NextContinuationToken)
	}
	return out, nil
}
