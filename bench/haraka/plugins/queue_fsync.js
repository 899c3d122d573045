// A queue plugin for the benchmark: append each message to one spool file and
// fsync before answering 250, so Haraka's acceptance is durable like ours.
'use strict';
const fs = require('fs');
const { Writable } = require('stream');

let fd;

exports.register = function () {
    fd = fs.openSync(process.env.HARAKA_SPOOL || 'spool.mbox', 'a');
};

exports.hook_queue = function (next, connection) {
    const chunks = [];
    const sink = new Writable({
        write (chunk, encoding, done) { chunks.push(chunk); done(); },
    });
    sink.on('finish', () => {
        fs.write(fd, Buffer.concat(chunks), (err) => {
            if (err) return next(DENYSOFT, 'spool write failed');
            fs.fsync(fd, (err2) => next(err2 ? DENYSOFT : OK));
        });
    });
    connection.transaction.message_stream.pipe(sink);
};
