package br

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tikv/client-go/v2/config"
	"github.com/tikv/client-go/v2/tikv"
	pd "github.com/tikv/pd/client"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"logbackup/br/tidbschema"
	"logbackup/meta"
)

// PDClient is PD's client of the environment, dialled on first use.
func (e *Env) PDClient(ctx context.Context) (pd.Client, error) { return e.pd(ctx) }

// KVClient reads the cluster's data through TiKV's transactional KV API
// (client-go's snapshot reads: region cache from PD, requests to the
// leaders, lock resolution), which is how `start` reads TiDB's schema to
// resolve table filters.
type KVClient struct {
	store *tikv.KVStore
}

// DialKV builds client-go's KV store over PD's client pdc (kept open: the
// caller owns it), the etcd that PD serves (client-go reads TiDB's GC safe
// point there) and the TLS files of --ca/--cert/--key, used for every store.
// Nothing here waits on the network: requests dial stores as they need
// them, each under client-go's own timeouts and backoff budget.
func DialKV(pdc pd.Client, etcd *clientv3.Client, tls meta.TLSFiles) (*KVClient, error) {
	if pdc == nil || etcd == nil {
		return nil, errors.New("the KV client needs PD and its etcd")
	}
	if err := tls.Validate(); err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	codecPD := tikv.NewCodecPDClient(tikv.ModeTxn, borrowedPD{pdc})
	sec := config.NewSecurity(tls.CA, tls.Cert, tls.Key, nil)
	rpc := tikv.NewRPCClient(tikv.WithSecurity(sec), tikv.WithCodec(codecPD.GetCodec()))
	store, err := tikv.NewKVStore(fmt.Sprintf("logbackup-br-%d", pdc.GetClusterID(context.Background())),
		codecPD, etcdSafePointKV{cli: etcd}, rpc)
	if err != nil {
		_ = rpc.Close()
		return nil, fmt.Errorf("start the KV client: %w", err)
	}
	return &KVClient{store: store}, nil
}

// Schema is a source of TiDB's schema over the client.
func (k *KVClient) Schema() tidbschema.Source { return tidbschema.NewKVSource(k.store) }

// Close stops the client's background work and connections (PD's client
// and etcd stay open: they are borrowed).
func (k *KVClient) Close() error { return k.store.Close() }

// borrowedPD lends PD's client to client-go, whose Close would close it.
type borrowedPD struct{ pd.Client }

func (borrowedPD) Close() {}

// etcdSafePointKV is client-go's view of TiDB's saved GC safe point
// (/tidb/store/gcworker/saved_safe_point) over an etcd client the caller
// owns. client-go only reads it; a reader never writes it.
type etcdSafePointKV struct{ cli *clientv3.Client }

const safePointKVTimeout = 5 * time.Second

func (e etcdSafePointKV) Put(k, _ string) error {
	return fmt.Errorf("refusing to write %s: br only reads the cluster's safe point", k)
}

func (e etcdSafePointKV) Get(k string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), safePointKVTimeout)
	defer cancel()
	resp, err := e.cli.Get(ctx, k)
	if err != nil {
		return "", err
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

func (e etcdSafePointKV) GetWithPrefix(k string) ([]*mvccpb.KeyValue, error) {
	ctx, cancel := context.WithTimeout(context.Background(), safePointKVTimeout)
	defer cancel()
	resp, err := e.cli.Get(ctx, k, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	return resp.Kvs, nil
}

func (etcdSafePointKV) Close() error { return nil }
