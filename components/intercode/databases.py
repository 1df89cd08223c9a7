"""The SQL environment's databases, written for this project (Spider-style, four domains).

Upstream InterCode-SQL runs Spider's dev set on MySQL; Spider cannot be downloaded here, so four
small relational databases are generated deterministically (seeded) as SQLite files:
school, store, flights, library. Each is a schema + rows, so the same data could be loaded into a
database server as well.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PEOPLE = [
    "Ada Lovelace",
    "Alan Turing",
    "Grace Hopper",
    "Edsger Dijkstra",
    "Barbara Liskov",
    "Donald Knuth",
    "Frances Allen",
    "John Backus",
    "Margaret Hamilton",
    "Ken Thompson",
    "Radia Perlman",
    "Tim Berners",
    "Leslie Lamport",
    "Shafi Goldwasser",
    "Niklaus Wirth",
    "Adele Goldberg",
    "Butler Lampson",
    "Judea Pearl",
    "Sophie Wilson",
    "Dennis Ritchie",
    "Karen Jones",
    "Robin Milner",
    "Tony Hoare",
    "Jean Sammet",
    "Yann Lecun",
    "Fei Li",
    "Andrew Yao",
    "Silvio Micali",
    "Lynn Conway",
    "Ivan Sutherland",
]


@dataclass
class Database:
    name: str
    schema: list[str]  # CREATE TABLE statements
    rows: dict[str, list[tuple]]  # table -> rows, in insertion order


def _school(rng: random.Random) -> Database:
    departments = [
        (1, "Computer Science", "Gates", 950000),
        (2, "Mathematics", "Euler", 600000),
        (3, "Physics", "Curie", 720000),
        (4, "History", "Herodotus", 300000),
        (5, "Biology", "Darwin", 540000),
    ]
    instructors = [
        (i + 1, PEOPLE[i], rng.randint(1, 5), rng.randrange(60000, 150000, 1000), rng.randint(1995, 2022))
        for i in range(12)
    ]
    students = [
        (
            100 + i,
            PEOPLE[(i + 7) % len(PEOPLE)].split()[0] + f" S{i}",
            rng.randint(1, 4),
            rng.randint(1, 5),
            round(rng.uniform(2.0, 4.0), 2),
        )
        for i in range(40)
    ]
    titles = {
        1: ["Algorithms", "Databases", "Operating Systems", "Machine Learning"],
        2: ["Linear Algebra", "Calculus", "Probability"],
        3: ["Mechanics", "Quantum Physics"],
        4: ["Ancient Rome", "Modern Europe"],
        5: ["Genetics", "Ecology"],
    }
    courses, cid = [], 1
    for dept, names in titles.items():
        for title in names:
            courses.append((cid, title, dept, rng.choice([3, 4, 5])))
            cid += 1
    enrollments = []
    for student in students:
        for course in rng.sample(courses, rng.randint(1, 4)):
            enrollments.append(
                (student[0], course[0], rng.choice(["2023-fall", "2024-spring"]), rng.choice("AABBBCCDF"))
            )
    teaches = [(rng.randint(1, 12), c[0], rng.choice(["2023-fall", "2024-spring"])) for c in courses]
    return Database(
        "school",
        [
            "CREATE TABLE departments (dept_id INTEGER PRIMARY KEY, name TEXT, building TEXT, budget INTEGER)",
            "CREATE TABLE instructors (instructor_id INTEGER PRIMARY KEY, name TEXT, dept_id INTEGER, salary INTEGER, hire_year INTEGER)",
            "CREATE TABLE students (student_id INTEGER PRIMARY KEY, name TEXT, year INTEGER, dept_id INTEGER, gpa REAL)",
            "CREATE TABLE courses (course_id INTEGER PRIMARY KEY, title TEXT, dept_id INTEGER, credits INTEGER)",
            "CREATE TABLE enrollments (student_id INTEGER, course_id INTEGER, semester TEXT, grade TEXT)",
            "CREATE TABLE teaches (instructor_id INTEGER, course_id INTEGER, semester TEXT)",
        ],
        {
            "departments": departments,
            "instructors": instructors,
            "students": students,
            "courses": courses,
            "enrollments": enrollments,
            "teaches": teaches,
        },
    )


def _store(rng: random.Random) -> Database:
    cities = [
        ("Paris", "France"),
        ("Lyon", "France"),
        ("Berlin", "Germany"),
        ("Munich", "Germany"),
        ("Madrid", "Spain"),
        ("Rome", "Italy"),
        ("Boston", "USA"),
        ("Austin", "USA"),
    ]
    customers = []
    for i in range(30):
        city, country = rng.choice(cities)
        customers.append((i + 1, PEOPLE[i], city, country, rng.randint(2018, 2024)))
    catalog = {
        "electronics": ["laptop", "phone", "headphones", "monitor", "keyboard"],
        "furniture": ["desk", "chair", "lamp", "shelf"],
        "books": ["novel", "cookbook", "atlas"],
        "toys": ["puzzle", "kite"],
    }
    products, pid = [], 1
    for category, names in catalog.items():
        for name in names:
            products.append((pid, name, category, round(rng.uniform(5, 900), 2)))
            pid += 1
    orders, items = [], []
    for oid in range(1, 71):
        customer = rng.randint(1, 26)  # customers 27-30 never order: "customers without orders" tasks
        orders.append(
            (
                oid,
                customer,
                f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                rng.choice(["shipped", "shipped", "shipped", "pending", "cancelled"]),
            )
        )
        for product in rng.sample(products[:-1], rng.randint(1, 3)):  # the last product never sells
            items.append((oid, product[0], rng.randint(1, 5)))
    return Database(
        "store",
        [
            "CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, name TEXT, city TEXT, country TEXT, signup_year INTEGER)",
            "CREATE TABLE products (product_id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL)",
            "CREATE TABLE orders (order_id INTEGER PRIMARY KEY, customer_id INTEGER, order_date TEXT, status TEXT)",
            "CREATE TABLE order_items (order_id INTEGER, product_id INTEGER, quantity INTEGER)",
        ],
        {"customers": customers, "products": products, "orders": orders, "order_items": items},
    )


def _flights(rng: random.Random) -> Database:
    airports = [
        ("CDG", "Charles de Gaulle", "Paris", "France"),
        ("ORY", "Orly", "Paris", "France"),
        ("LHR", "Heathrow", "London", "United Kingdom"),
        ("FRA", "Frankfurt", "Frankfurt", "Germany"),
        ("MAD", "Barajas", "Madrid", "Spain"),
        ("JFK", "John F Kennedy", "New York", "USA"),
        ("SFO", "San Francisco", "San Francisco", "USA"),
        ("NRT", "Narita", "Tokyo", "Japan"),
        ("AMS", "Schiphol", "Amsterdam", "Netherlands"),
    ]
    airlines = [
        (1, "Air France", "France"),
        (2, "Lufthansa", "Germany"),
        (3, "Iberia", "Spain"),
        (4, "United", "USA"),
        (5, "ANA", "Japan"),
        (6, "KLM", "Netherlands"),
    ]
    flights = []
    for fid in range(1, 61):
        origin, dest = rng.sample([a[0] for a in airports[:-1]], 2)  # nothing flies to or from AMS
        distance = rng.randint(300, 9500)
        flights.append(
            (
                fid,
                rng.randint(1, 5),
                origin,
                dest,
                distance,
                distance // 8 + rng.randint(20, 60),
                round(distance * rng.uniform(0.05, 0.2), 2),
            )
        )
    return Database(
        "flights",
        [
            "CREATE TABLE airports (code TEXT PRIMARY KEY, name TEXT, city TEXT, country TEXT)",
            "CREATE TABLE airlines (airline_id INTEGER PRIMARY KEY, name TEXT, country TEXT)",
            "CREATE TABLE flights (flight_id INTEGER PRIMARY KEY, airline_id INTEGER, origin TEXT, destination TEXT, "
            "distance INTEGER, duration_min INTEGER, price REAL)",
        ],
        {"airports": airports, "airlines": airlines, "flights": flights},
    )


def _library(rng: random.Random) -> Database:
    nationalities = ["British", "French", "American", "Japanese", "Nigerian"]
    authors = [(i + 1, PEOPLE[-(i + 1)], rng.randint(1850, 1990), rng.choice(nationalities)) for i in range(12)]
    genres = ["fiction", "mystery", "science", "history", "poetry"]
    books = [
        (
            i + 1,
            f"Book {chr(65 + i % 26)}{i // 26 + 1}",
            rng.randint(1, 11),
            rng.randint(1900, 2023),
            rng.choice(genres),
            rng.randint(80, 900),
        )
        for i in range(45)
    ]  # author 12 wrote nothing
    members = [(i + 1, PEOPLE[(i * 3) % len(PEOPLE)].split()[1] + f" M{i}", rng.randint(2015, 2024)) for i in range(20)]
    loans = [
        (
            lid,
            rng.randint(1, 45),
            rng.randint(1, 17),
            f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            rng.choice([0, 1, 1]),
        )
        for lid in range(1, 81)
    ]  # members 18-20 never borrowed
    return Database(
        "library",
        [
            "CREATE TABLE authors (author_id INTEGER PRIMARY KEY, name TEXT, birth_year INTEGER, nationality TEXT)",
            "CREATE TABLE books (book_id INTEGER PRIMARY KEY, title TEXT, author_id INTEGER, year INTEGER, genre TEXT, pages INTEGER)",
            "CREATE TABLE members (member_id INTEGER PRIMARY KEY, name TEXT, joined_year INTEGER)",
            "CREATE TABLE loans (loan_id INTEGER PRIMARY KEY, book_id INTEGER, member_id INTEGER, loan_date TEXT, returned INTEGER)",
        ],
        {"authors": authors, "books": books, "members": members, "loans": loans},
    )


DATABASES: dict[str, Callable[[random.Random], Database]] = {
    "school": _school,
    "store": _store,
    "flights": _flights,
    "library": _library,
}


def generate(name: str, seed: int = 0) -> Database:
    if name not in DATABASES:
        raise KeyError(f"unknown database {name!r}; have {sorted(DATABASES)}")
    return DATABASES[name](random.Random(f"{name}-{seed}"))


def write_sqlite(db: Database, path: Path) -> Path:
    """Create the SQLite file for `db` at `path` (replaced if present)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(tmp) as con:
        for statement in db.schema:
            con.execute(statement)
        for table, rows in db.rows.items():
            if rows:
                marks = ",".join("?" * len(rows[0]))
                con.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    con.close()
    tmp.replace(path)
    return path


def build_all(base: Path, seed: int = 0) -> dict[str, Path]:
    return {name: write_sqlite(generate(name, seed), Path(base) / f"{name}.sqlite") for name in DATABASES}
