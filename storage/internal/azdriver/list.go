package azdriver

import (
	"context"
	"sort"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"gocloud.dev/blob/driver"
)

// Page sizes: Azure's default and maximum is 5000; gocloud's driver asked
// for 1000 when the caller named none.
const (
	defaultPageSize = 1000
	maxPageSize     = 5000
)

// ListPaged is one List Blobs request: flat without a delimiter,
// hierarchical with one (prefixes become IsDir objects). Keys are
// unescaped, and blobs and prefixes merged in key order.
func (b *bucket) ListPaged(ctx context.Context, opts *driver.ListOptions) (*driver.ListPage, error) {
	if opts.BeforeList != nil {
		if err := opts.BeforeList(noAs); err != nil {
			return nil, err
		}
	}
	size := opts.PageSize
	if size <= 0 {
		size = defaultPageSize
	}
	n := int32(min(size, maxPageSize))
	prefix := escapePrefix(opts.Prefix)
	var marker *string
	if len(opts.PageToken) > 0 {
		m := string(opts.PageToken)
		marker = &m
	}
	var (
		items    []*container.BlobItem
		prefixes []*container.BlobPrefix
		next     *string
	)
	if opts.Delimiter == "" {
		resp, err := b.client.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{
			Prefix: &prefix, Marker: marker, MaxResults: &n,
		}).NextPage(ctx)
		if err != nil {
			return nil, err
		}
		if resp.Segment != nil {
			items = resp.Segment.BlobItems
		}
		next = resp.NextMarker
	} else {
		resp, err := b.client.NewListBlobsHierarchyPager(escapePrefix(opts.Delimiter), &container.ListBlobsHierarchyOptions{
			Prefix: &prefix, Marker: marker, MaxResults: &n,
		}).NextPage(ctx)
		if err != nil {
			return nil, err
		}
		if resp.Segment != nil {
			items, prefixes = resp.Segment.BlobItems, resp.Segment.BlobPrefixes
		}
		next = resp.NextMarker
	}
	page := &driver.ListPage{Objects: make([]*driver.ListObject, 0, len(items)+len(prefixes))}
	for _, it := range items {
		o := &driver.ListObject{Key: unescapeKey(deref(it.Name)), AsFunc: noAs}
		if p := it.Properties; p != nil {
			o.ModTime, o.Size, o.MD5 = deref(p.LastModified), deref(p.ContentLength), p.ContentMD5
		}
		page.Objects = append(page.Objects, o)
	}
	for _, p := range prefixes {
		page.Objects = append(page.Objects, &driver.ListObject{Key: unescapeKey(deref(p.Name)), IsDir: true, AsFunc: noAs})
	}
	// Blobs and prefixes come as two sorted lists; the portable type
	// wants one, in key order.
	sort.Slice(page.Objects, func(i, j int) bool { return page.Objects[i].Key < page.Objects[j].Key })
	if m := deref(next); m != "" {
		page.NextPageToken = []byte(m)
	}
	return page, nil
}
