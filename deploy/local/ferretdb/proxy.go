package main

// FerretDB v1 executes update, findAndModify and delete as "query the matching documents, then
// write them back by _id" without any lock or version check, so concurrent writers to the same
// document lose updates: 200 concurrent {$inc: {n: 1}} leave n well below 200, and a guarded
// findAndModify({left: {$gt: 0}}, {$inc: {left: -1}}) lets far more callers "win" than there are
// slots. MongoDB applies each single-document update atomically and the application relies on it.
//
// writeSerializer is a MongoDB wire-protocol pass-through in front of FerretDB that runs those
// read-modify-write commands one at a time per collection (other commands, inserts included, are
// not delayed). MongoDB drivers never pipeline requests on one connection, so a connection is
// handled as request -> response(s).
//
// It also fixes one error code: when an update or findAndModify changes an existing document into
// a key that a unique index already holds, FerretDB answers InternalError (code 1, "SQLSTATE
// 23505") where MongoDB answers DuplicateKey (11000); drivers map only the latter to
// DuplicateKeyError, so such responses are rewritten.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"

	"go.mongodb.org/mongo-driver/bson"
)

const (
	opMsg = 2013

	flagChecksumPresent = 1 << 0
	flagMoreToCome      = 1 << 1

	maxMessageSize = 64 << 20
)

// serializedCommands are the commands whose FerretDB implementation is read-modify-write.
var serializedCommands = map[string]bool{
	"update":        true,
	"findandmodify": true,
	"delete":        true,
}

type writeSerializer struct {
	backend string // unix socket of the embedded FerretDB
	logger  *slog.Logger

	mu    sync.Mutex
	locks map[string]*sync.Mutex // "db.collection" -> lock

	connsMu sync.Mutex
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

func newWriteSerializer(backend string, logger *slog.Logger) *writeSerializer {
	return &writeSerializer{
		backend: backend,
		logger:  logger,
		locks:   map[string]*sync.Mutex{},
		conns:   map[net.Conn]struct{}{},
	}
}

// serve accepts clients on l until ctx is canceled, then closes all connections and returns.
func (s *writeSerializer) serve(ctx context.Context, l net.Listener) {
	go func() {
		<-ctx.Done()
		l.Close()
		s.connsMu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.connsMu.Unlock()
	}()

	for {
		client, err := l.Accept()
		if err != nil {
			if ctx.Err() == nil {
				s.logger.Error("accept failed", slog.Any("error", err))
			}
			break
		}

		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(ctx, client)
		}()
	}

	s.wg.Wait()
}

func (s *writeSerializer) track(c net.Conn, add bool) {
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	if add {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
}

func (s *writeSerializer) handle(ctx context.Context, client net.Conn) {
	s.track(client, true)
	defer s.track(client, false)
	defer client.Close()

	var d net.Dialer
	backend, err := d.DialContext(ctx, "unix", s.backend)
	if err != nil {
		s.logger.Error("cannot reach embedded FerretDB", slog.Any("error", err))
		return
	}
	s.track(backend, true)
	defer s.track(backend, false)
	defer backend.Close()

	for {
		if err := s.roundTrip(client, backend); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
				s.logger.Debug("connection closed", slog.Any("error", err))
			}
			return
		}
	}
}

// roundTrip relays one request and its response(s).
func (s *writeSerializer) roundTrip(client, backend net.Conn) error {
	req, err := readMessage(client)
	if err != nil {
		return err
	}

	expectResponse := true
	var ns string
	if opCode(req) == opMsg {
		var flags uint32
		var serialize bool
		flags, ns, serialize = inspectMsg(req)
		expectResponse = flags&flagMoreToCome == 0
		if serialize {
			lock := s.lockFor(ns)
			lock.Lock()
			defer lock.Unlock()
		} else {
			ns = ""
		}
	}

	if _, err = backend.Write(req); err != nil {
		return err
	}
	if !expectResponse {
		return nil
	}

	for {
		resp, err := readMessage(backend)
		if err != nil {
			return err
		}
		if ns != "" {
			resp = rewriteDuplicateKey(resp, ns)
		}
		if _, err = client.Write(resp); err != nil {
			return err
		}
		if opCode(resp) != opMsg || binary.LittleEndian.Uint32(resp[16:20])&flagMoreToCome == 0 {
			return nil
		}
	}
}

func (s *writeSerializer) lockFor(ns string) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.locks[ns]
	if !ok {
		l = new(sync.Mutex)
		s.locks[ns] = l
	}
	return l
}

func readMessage(r io.Reader) ([]byte, error) {
	var header [16]byte
	if _, err := io.ReadFull(r, header[:]); err != nil {
		return nil, err
	}
	size := binary.LittleEndian.Uint32(header[0:4])
	if size < 16 || size > maxMessageSize {
		return nil, fmt.Errorf("invalid message length %d", size)
	}
	msg := make([]byte, size)
	copy(msg, header[:])
	if _, err := io.ReadFull(r, msg[16:]); err != nil {
		return nil, err
	}
	return msg, nil
}

func opCode(msg []byte) int32 {
	return int32(binary.LittleEndian.Uint32(msg[12:16]))
}

// inspectMsg returns OP_MSG flag bits and, for a read-modify-write command, its "db.collection".
func inspectMsg(msg []byte) (flags uint32, ns string, serialize bool) {
	if len(msg) < 21 {
		return 0, "", false
	}
	flags = binary.LittleEndian.Uint32(msg[16:20])
	sections := msg[20:]
	if flags&flagChecksumPresent != 0 && len(sections) >= 4 {
		sections = sections[:len(sections)-4]
	}

	for len(sections) > 5 {
		kind := sections[0]
		size := int(binary.LittleEndian.Uint32(sections[1:5]))
		if size < 5 || size > len(sections)-1 {
			return flags, "", false
		}
		if kind == 0 { // the command body
			body := bson.Raw(sections[1 : 1+size])
			first, err := body.IndexErr(0)
			if err != nil {
				return flags, "", false
			}
			if !serializedCommands[strings.ToLower(first.Key())] {
				return flags, "", false
			}
			coll, _ := first.Value().StringValueOK()
			db, _ := body.Lookup("$db").StringValueOK()
			return flags, db + "." + coll, true
		}
		sections = sections[1+size:]
	}

	return flags, "", false
}

// rewriteDuplicateKey turns FerretDB's InternalError for a unique index violation on update into
// MongoDB's DuplicateKey error; any other message is returned unchanged.
func rewriteDuplicateKey(msg []byte, ns string) []byte {
	if opCode(msg) != opMsg || len(msg) < 26 || msg[20] != 0 {
		return msg
	}
	flags := binary.LittleEndian.Uint32(msg[16:20])
	if flags&^flagChecksumPresent != 0 {
		return msg
	}
	size := int(binary.LittleEndian.Uint32(msg[21:25]))
	if size < 5 || 21+size > len(msg) {
		return msg
	}
	body := bson.Raw(msg[21 : 21+size])

	code, ok := body.Lookup("code").AsInt64OK()
	if !ok || code != 1 {
		return msg
	}
	errmsg, _ := body.Lookup("errmsg").StringValueOK()
	if !strings.Contains(errmsg, "SQLSTATE 23505") {
		return msg
	}

	newBody, err := bson.Marshal(bson.D{
		{Key: "ok", Value: float64(0)},
		{Key: "errmsg", Value: "E11000 duplicate key error collection: " + ns + " (" + errmsg + ")"},
		{Key: "code", Value: int32(11000)},
		{Key: "codeName", Value: "DuplicateKey"},
	})
	if err != nil {
		return msg
	}

	out := make([]byte, 21, 21+len(newBody))
	copy(out, msg[:16])
	// flag bits stay 0 (no checksum), section kind 0
	out = append(out, newBody...)
	binary.LittleEndian.PutUint32(out[0:4], uint32(len(out)))

	return out
}
