package gcsjson

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"

	"gocloud.dev/blob/driver"
	"google.golang.org/api/googleapi"
)

// defaultPageSize is the API's own maximum and default.
const defaultPageSize = 1000

// listFields asks only for what a listed object becomes: a page of full
// object resources is several times larger.
const listFields = "items(name,size,updated,md5Hash),prefixes,nextPageToken"

func (b *bucket) ListPaged(ctx context.Context, opts *driver.ListOptions) (*driver.ListPage, error) {
	q := url.Values{}
	q.Set("fields", listFields)
	if opts.Prefix != "" {
		q.Set("prefix", opts.Prefix)
	}
	if opts.Delimiter != "" {
		q.Set("delimiter", opts.Delimiter)
	}
	size := opts.PageSize
	if size <= 0 || size > defaultPageSize {
		size = defaultPageSize
	}
	q.Set("maxResults", strconv.Itoa(size))
	if len(opts.PageToken) > 0 {
		q.Set("pageToken", string(opts.PageToken))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.api+"b/"+escape(b.name)+"/o?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	if opts.BeforeList != nil {
		if err := opts.BeforeList(noAs); err != nil {
			return nil, err
		}
	}
	resp, err := b.send(req, http.StatusOK)
	if err != nil {
		var ge *googleapi.Error
		if errors.As(err, &ge) && ge.Code == http.StatusNotFound {
			// A listing names no object: only the bucket can be missing.
			return nil, fmt.Errorf("%w: %w", ErrBucketNotExist, err)
		}
		return nil, err
	}
	var page struct {
		Items         []object `json:"items"`
		Prefixes      []string `json:"prefixes"`
		NextPageToken string   `json:"nextPageToken"`
	}
	if err := decode(resp, &page); err != nil {
		return nil, fmt.Errorf("gcs: list page: %w", err)
	}
	out := &driver.ListPage{Objects: make([]*driver.ListObject, 0, len(page.Items)+len(page.Prefixes))}
	for i := range page.Items {
		o := &page.Items[i]
		out.Objects = append(out.Objects, &driver.ListObject{
			Key: o.Name, ModTime: parseTime(o.Updated), Size: int64(o.Size), MD5: o.md5(), AsFunc: noAs,
		})
	}
	for _, p := range page.Prefixes {
		out.Objects = append(out.Objects, &driver.ListObject{Key: p, IsDir: true, AsFunc: noAs})
	}
	// Items and prefixes come as two sorted lists; the portable type
	// wants one, in key order.
	sort.Slice(out.Objects, func(i, j int) bool { return out.Objects[i].Key < out.Objects[j].Key })
	if page.NextPageToken != "" {
		out.NextPageToken = []byte(page.NextPageToken)
	}
	return out, nil
}
