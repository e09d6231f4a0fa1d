package gcsjson

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"gocloud.dev/blob/driver"
	"google.golang.org/api/googleapi"
)

// object is the part of the JSON API's object resource the driver reads.
type object struct {
	Name               string            `json:"name"`
	Size               int64String       `json:"size"`
	Updated            string            `json:"updated"`
	TimeCreated        string            `json:"timeCreated"`
	MD5Hash            string            `json:"md5Hash"`
	Etag               string            `json:"etag"`
	ContentType        string            `json:"contentType"`
	CacheControl       string            `json:"cacheControl"`
	ContentDisposition string            `json:"contentDisposition"`
	ContentEncoding    string            `json:"contentEncoding"`
	ContentLanguage    string            `json:"contentLanguage"`
	Metadata           map[string]string `json:"metadata"`
	StorageClass       string            `json:"storageClass"`
}

func (o *object) attributes() *driver.Attributes {
	ct := o.ContentType
	if ct == "" {
		ct = "application/octet-stream" // the portable type must have one
	}
	return &driver.Attributes{
		CacheControl:       o.CacheControl,
		ContentDisposition: o.ContentDisposition,
		ContentEncoding:    o.ContentEncoding,
		ContentLanguage:    o.ContentLanguage,
		ContentType:        ct,
		Metadata:           o.Metadata,
		CreateTime:         parseTime(o.TimeCreated),
		ModTime:            parseTime(o.Updated),
		Size:               int64(o.Size),
		MD5:                o.md5(),
		ETag:               o.Etag,
		AsFunc:             noAs,
	}
}

// md5 is the object's MD5, or nil: composite objects have none.
func (o *object) md5() []byte {
	if o.MD5Hash == "" {
		return nil
	}
	b, err := base64.StdEncoding.DecodeString(o.MD5Hash)
	if err != nil {
		return nil
	}
	return b
}

// int64String is an int64 the API sends as a JSON string ("size":
// "123"); a plain number is taken as well.
type int64String int64

func (n *int64String) UnmarshalJSON(b []byte) error {
	b = bytes.Trim(b, `"`)
	if len(b) == 0 || string(b) == "null" {
		*n = 0
		return nil
	}
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("size %q: %w", b, err)
	}
	*n = int64String(v)
	return nil
}

// maxJSONBody bounds a JSON answer: a page of 1000 listed objects is well
// under a megabyte.
const maxJSONBody = 32 << 20

// decode reads a JSON answer into v and closes the body. A body cut short
// is io.ErrUnexpectedEOF, which the storage retries.
func decode(resp *http.Response, v any) error {
	defer resp.Body.Close()
	err := json.NewDecoder(io.LimitReader(resp.Body, maxJSONBody)).Decode(v)
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// asError is ErrorAs: only the *googleapi.Error is exposed.
func asError(err error, target any) bool {
	if p, ok := target.(**googleapi.Error); ok {
		return errors.As(err, p)
	}
	return false
}
