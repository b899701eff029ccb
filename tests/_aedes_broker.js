// A plain aedes broker for the conformance tests: `node _aedes_broker.js HOST PORT`.
// aedes is installed by `make brokers` into .npm-brokers/ (NODE_PATH points there).
// Prints "listening HOST:PORT" once the socket accepts connections.
'use strict'
const net = require('net')
const aedes = require('aedes')()

const [host, port] = [process.argv[2] || '127.0.0.1', Number(process.argv[3] || 1883)]
const server = net.createServer(aedes.handle)
server.on('error', (err) => { console.error(`aedes: ${err.message}`); process.exit(2) })
server.listen(port, host, () => console.log(`listening ${host}:${port}`))
const stop = () => { server.close(); aedes.close(() => process.exit(0)) }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
